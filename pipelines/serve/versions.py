"""What a generator replica serves: a loaded registered version (or model folder), and following an alias.

`models:/NAME@ALIAS` (and `models:/NAME`, the latest version) are followed: the replica asks the registry at
most every poll interval, on a request, and swaps to the new version once it is loaded; requests meanwhile
are answered by the old one. `models:/NAME/VERSION` and folders are fixed.
"""

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..generate.sample import resolve_guidance
from ..models.registry import model_folder, parse_model_ref, resolve_version
from ..tracking import connect


@dataclass
class Served:
    generator: object  # imf_core.Generator
    label: str  # NAME/VERSION, or the model folder
    version: object = None  # the MLflow ModelVersion (None for a folder)

    def guidance(self, given: dict) -> dict:
        """The request's guidance, the version's stored setting where not given."""
        return resolve_guidance(given, self.generator.config, self.version)

    def labels(self, classes) -> list[int]:
        """Class indices of a request's classes (indices or names); ValueError names the unknown ones."""
        names = self.generator.config.get("class_names") or []
        unknown = sorted({c for c in classes if isinstance(c, str) and c not in names})
        if unknown:
            known = f"its class names are {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}" if names \
                else "it has no class names"
            raise ValueError(f"class {', '.join(map(repr, unknown))}: not a class of this model ({known}); "
                             f"or give an index 0..{self.generator.num_classes - 1}")
        labels = [names.index(c) if isinstance(c, str) else int(c) for c in classes]
        self.generator.check_classes(labels)
        return labels

    def info(self) -> dict:
        config, guidance = self.generator.config, self.guidance({})
        return {"model_version": self.label, "num_classes": self.generator.num_classes,
                "class_names": config.get("class_names"), "guidance": guidance,
                "guidance_range": guidance_range(config, guidance), "image_size": config.get("resolution")}


def guidance_range(config: dict, stored: dict) -> dict:
    """[low, high] of omega, t_min and t_max that the network was trained on (its draws), widened to the stored
    setting; high None: not recorded (the authors' released weights)."""
    draws = config.get("train_config", {}).get("draws", {})
    ranges = {"omega": [1.0, draws.get("omega_max")], "t_min": list(draws.get("t_min_range", (0.0, 1.0))),
              "t_max": list(draws.get("t_max_range", (0.0, 1.0)))}
    for key, (low, high) in ranges.items():
        ranges[key] = [min(low, stored[key]), None if high is None else max(high, stored[key])]
    return ranges


def load_served(ref: str, tracking_uri: str | None, device=None) -> Served:
    from imf_core import load_generator

    with tempfile.TemporaryDirectory(prefix="imf_serve_") as tmp:
        folder, version = model_folder(ref, tracking_uri, dst=tmp)
        generator = load_generator(folder, device)  # weights are in memory: the download can go
    label = f"{version.name}/{version.version}" if version is not None else str(Path(folder).resolve())
    return Served(generator, label, version)


def follows(ref: str) -> bool:
    """Whether the reference can point at another version later (an alias, or the latest version)."""
    return ref.startswith("models:/") and parse_model_ref(ref)[2] is None


def pointed_label(ref: str, tracking_uri: str | None) -> str:
    """NAME/VERSION that a `models:/` reference points at now."""
    client, _ = connect(tracking_uri)
    version = resolve_version(client, ref)
    return f"{version.name}/{version.version}"


def check_reference(ref: str, tracking_uri: str | None) -> tuple[str, str | None]:
    """What `--model` points at now and the tracking URI to give the replicas (absolute), before Ray starts."""
    if ref.startswith("models:/"):
        client, uri = connect(tracking_uri)
        version = resolve_version(client, ref)
        return f"{version.name}/{version.version}", uri
    path = Path(ref)
    if not (path / "config.json").is_file():
        raise UserError(f"--model {ref}: not a model folder (no config.json) nor a models:/NAME@ALIAS reference; "
                        "see `imf models list`")
    return str(path.resolve()), tracking_uri
