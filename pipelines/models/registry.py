"""Registered imf models in MLflow: versions holding a generator folder (`imf_model`, see artifact.py)
and a pyfunc written as code, aliases (champion / challenger), metrics and lineage on the version,
and the `imf models` commands.
"""

import json
import pickle
import tempfile
from pathlib import Path

from imf_core import load_official, save_generator
from imf_core.codecs import SD_VAE_MEAN, SD_VAE_STD

from ..errors import UserError
from ..storage import Location
from ..tracking import connect
from .artifact import folder_from_checkpoint

IMF_ROOT = Path(__file__).resolve().parents[2] / "imf_core"
PYFUNC_FILE = Path(__file__).resolve().parent / "pyfunc_model.py"
# The authors' released 1-NFE settings (docs/method.md, "Sampling").
OFFICIAL_GUIDANCE = {
    "B/2": {"omega": 8.0, "t_min": 0.40, "t_max": 0.65, "steps": 1},
    "M/2": {"omega": 10.5, "t_min": 0.40, "t_max": 0.60, "steps": 1},
    "L/2": {"omega": 10.5, "t_min": 0.40, "t_max": 0.60, "steps": 1},
    "XL/2": {"omega": 8.0, "t_min": 0.42, "t_max": 0.62, "steps": 1},
}
SD_VAE_HUB = "stabilityai/sd-vae-ft-mse"


def register_folder(folder, name: str, tracking_uri: str | None, run_id: str | None = None,
                    aliases=("challenger",), tags: dict | None = None, description: str = ""):
    """Log the folder as a pyfunc model in `run_id` (or a new run) and register it under `name`.

    The version gets `aliases` (and `champion` when the model has no champion yet). Returns the ModelVersion.
    """
    import mlflow

    client, uri = connect(tracking_uri)
    mlflow.set_tracking_uri(uri)
    config = json.loads((Path(folder) / "config.json").read_text())
    experiment = None
    if run_id is None:
        from ..tracking import experiment_id

        experiment = experiment_id(client, "imf/registry", uri)
    with mlflow.start_run(run_id=run_id, experiment_id=experiment, run_name=None if run_id else f"register-{name}"):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(PYFUNC_FILE), artifacts={"imf_model": str(folder)},
            code_paths=[str(IMF_ROOT)], registered_model_name=name,
            pip_requirements=["torch", "numpy", "safetensors", "diffusers", "pandas"],
        )
    version = str(info.registered_model_version)
    guidance = config.get("guidance", {})
    all_tags = {**{f"imf.guidance.{k}": v for k, v in guidance.items()},
                "imf.model": json.dumps(config["model"]), "imf.codec": config["codec"]["codec"], **(tags or {})}
    for key, value in all_tags.items():
        client.set_model_version_tag(name, version, key, value if isinstance(value, str) else json.dumps(value))
    if description:
        client.update_model_version(name, version, description=description)
    current = client.get_registered_model(name).aliases or {}
    for alias in set(aliases) | ({"champion"} if "champion" not in current else set()):
        client.set_registered_model_alias(name, alias, version)
    return client.get_model_version(name, version)


def register_checkpoint(checkpoint, name, tracking_uri, manifest: dict | None = None, run_id=None,
                        aliases=("challenger",), metrics: dict | None = None, config: dict | None = None,
                        guidance: dict | None = None, source: str | None = None):
    """Register a training checkpoint's EMA network under `name` (used by train and tune); `source`: where the
    checkpoint lives when `checkpoint` is a local copy of it."""
    with tempfile.TemporaryDirectory(prefix="imf_model_") as tmp:
        folder = folder_from_checkpoint(checkpoint, Path(tmp) / "imf_model", manifest, guidance)
        tags = {f"metric.{k}": v for k, v in (metrics or {}).items()}
        if config is not None:
            tags["imf.train_config"] = json.dumps(config)
        tags.update(checkpoint_lineage(checkpoint, run_id))
        if source:
            tags["imf.lineage.checkpoint"] = str(source)
        return register_folder(folder, name, tracking_uri, run_id, aliases, tags,
                               description=f"EMA weights of {source or checkpoint}")


def checkpoint_lineage(checkpoint, run_id=None) -> dict:
    """Where a registered network comes from: its latent data, training run and checkpoint (with its step)."""
    progress = Path(checkpoint) / "progress.json"
    saved = json.loads(progress.read_text()) if progress.is_file() else {}
    lineage = {"imf.lineage.checkpoint": str(checkpoint), "imf.lineage.step": saved.get("step"),
               "imf.lineage.data": saved.get("data"), "imf.lineage.run_id": run_id}
    return {k: v for k, v in lineage.items() if v is not None}


def import_official(path, size: str, name: str, tracking_uri, vae: str = SD_VAE_HUB, aliases=("challenger",)):
    """Register a checkpoint released by the authors (their torch branch's .pth) with its guidance settings."""
    if size not in OFFICIAL_GUIDANCE:
        raise UserError(f"--size {size!r}: the authors released {', '.join(OFFICIAL_GUIDANCE)}")
    try:
        net = load_official(path, size)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else err.__class__.__name__
        raise UserError(f"{path} is not an official iMF checkpoint for {size} ({err.__class__.__name__}: {first}); "
                        f"pass the authors' iMF-{size.replace('/', '-')}.pth") from None
    codec = {"codec": "sd-vae", "weights": vae, "channels": 4, "channel_mean": list(SD_VAE_MEAN),
             "channel_std": list(SD_VAE_STD)}
    with tempfile.TemporaryDirectory(prefix="imf_model_") as tmp:
        folder = save_generator(Path(tmp) / "imf_model", net, codec, (4, 32, 32), 256, 1000, None,
                              OFFICIAL_GUIDANCE[size], extra={"source": f"official {Path(path).name}"})
        tags = {"imf.source": "official", "imf.size": size}
        if size == "XL/2":
            tags["imf.guidance_2nfe"] = json.dumps({"omega": 4.0, "t_min": 0.36, "t_max": 0.64, "steps": 2})
        return register_folder(folder, name, tracking_uri, None, aliases, tags,
                               description=f"iMF-{size} released by the authors ({Path(path).name})")


def parse_model_ref(ref: str):
    """NAME, NAME@ALIAS or NAME/VERSION (a `models:/` prefix is accepted)."""
    ref = ref.removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return name, alias, None
    if "/" in ref and ref.rsplit("/", 1)[1].isdigit():
        name, version = ref.rsplit("/", 1)
        return name, None, version
    return ref, None, None


def resolve_version(client, ref: str):
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_model_ref(ref)
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        if version:
            return client.get_model_version(name, version)
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as err:
        raise UserError(f"no registered model matches {ref!r} ({err.message[:160]}); see `imf models list`") from err
    if not versions:
        raise UserError(f"no registered model named {name!r}; see `imf models list`")
    return max(versions, key=lambda v: int(v.version))


def model_folder(ref: str, tracking_uri: str | None, dst=None) -> tuple[Path, object]:
    """A local imf model folder for `models:/NAME@ALIAS` (downloaded) or a folder path; and its version (or None)."""
    path = Path(ref)
    if path.is_dir() and (path / "config.json").is_file():
        return path, None
    if not str(ref).startswith("models:/"):
        what = "the folder holds no config.json" if path.is_dir() else \
            "is a file, not a model folder" if path.is_file() else "the folder does not exist"
        raise UserError(f"--model {ref}: {what}; give an imf model folder or models:/NAME@ALIAS "
                        "(or models:/NAME/VERSION)")
    client, uri = connect(tracking_uri)
    version = resolve_version(client, ref)
    import mlflow

    # The version's storage location, asked of this store: a `models:/` URI would be resolved against
    # MLflow's default registry (./mlflow.db), not the one given.
    location = client.get_model_version_download_uri(version.name, version.version)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, tracking_uri=uri,
                                                     dst_path=str(dst) if dst else None))
    return model_artifact(local, ref), version


def model_artifact(logged: Path, ref: str) -> Path:
    """The imf model folder inside a downloaded pyfunc model, where its MLmodel file says it is."""
    from ..yaml_files import read_yaml_file

    try:
        meta = read_yaml_file(logged / "MLmodel", "the MLmodel file", mapping_of="MLflow's model fields")
        return logged / meta["flavors"]["python_function"]["artifacts"]["imf_model"]["path"]
    except (UserError, KeyError, TypeError) as err:
        raise UserError(f"{ref} is not an imf model (no imf_model artifact in its MLmodel: {err}); "
                        "register models with `imf models register` or `imf train --register`") from err


def set_best_guidance(client, name, version, guidance: dict, metric: str, value: float):
    for key, v in guidance.items():
        client.set_model_version_tag(name, version, f"imf.guidance.{key}", json.dumps(v))
    client.set_model_version_tag(name, version, "imf.guidance.selected_by", f"{metric}={value:.6g}")


def record_metrics(client, name, version, metrics: dict, run_id: str, guidance: dict | None = None):
    """An evaluation's metrics on the version it measured: tags `metric.KEY_Knfe` (K sampling steps), and the
    run that computed them."""
    suffix = f"_{int(guidance.get('steps', 1))}nfe" if guidance else ""
    for key, value in metrics.items():
        client.set_model_version_tag(name, version, f"metric.{key}{suffix}", f"{value:.6g}")
    client.set_model_version_tag(name, version, "imf.evaluation.run_id", run_id)
    if guidance:
        client.set_model_version_tag(name, version, "imf.evaluation.guidance", json.dumps(guidance))


def record_sweep(client, version, rows: list[dict], figure: Path, sweep_run_id: str):
    """A guidance sweep's plot and table with the version: logged to the version's own run (under
    sweeps/RUN_ID/) and named by tags, so that they travel with the model."""
    where = f"sweeps/{sweep_run_id}"
    columns = {k: [r.get(k) for r in rows] for k in rows[0]}
    client.log_artifact(version.run_id, str(figure), where)
    client.log_table(version.run_id, data=columns, artifact_file=f"{where}/sweep_table.json")
    tags = {"imf.sweep.run_id": sweep_run_id, "imf.sweep.plot": f"runs:/{version.run_id}/{where}/{figure.name}",
            "imf.sweep.table": f"runs:/{version.run_id}/{where}/sweep_table.json"}
    for key, value in tags.items():
        client.set_model_version_tag(version.name, version.version, key, value)


def version_guidance(version) -> dict:
    """The guidance setting stored on a version (the best one found by `imf evaluate sweep`)."""
    tags = version.tags or {}
    return {k.removeprefix("imf.guidance."): json.loads(v) for k, v in tags.items()
            if k.startswith("imf.guidance.") and k != "imf.guidance.selected_by"}


# ---- CLI ------------------------------------------------------------------------------------

def _list(args):
    client, _ = connect(args.tracking_uri)
    models = client.search_registered_models()
    if not models:
        print("no registered models")
    for m in models:
        aliases = ", ".join(f"{a}=v{v}" for a, v in sorted((m.aliases or {}).items())) or "no aliases"
        latest = max((int(v.version) for v in client.search_model_versions(f"name = '{m.name}'")), default=0)
        print(f"{m.name}  ({aliases}; {latest} version(s))")


def describe_version(client, v) -> str:
    """One readable block: model, guidance, metrics, lineage, the training config where it differs from the
    defaults, and every other tag."""
    tags = dict(v.tags or {})
    aliases = [a for a, ver in (client.get_registered_model(v.name).aliases or {}).items() if ver == v.version]
    lines = [f"{v.name} version {v.version}   aliases: {', '.join(sorted(aliases)) or '-'}"]
    if v.description:
        lines.append(f"  {v.description}")
    model = json.loads(tags.pop("imf.model", "{}"))
    if model:
        shape = f"width {model.get('hidden_size')}, depth {model.get('depth')}, patch {model.get('patch_size')}"
        lines.append(f"  model      {shape}, {model.get('num_classes')} classes, "
                     f"{model.get('in_channels')}x{model.get('input_size')}x{model.get('input_size')} "
                     f"{tags.pop('imf.codec', '')} latents")
    g = version_guidance(v)
    if g:
        chosen = tags.pop("imf.guidance.selected_by", "")
        lines.append(f"  guidance   omega {g.get('omega')}, interval [{g.get('t_min')}, {g.get('t_max')}], "
                     f"{g.get('steps', 1)} step(s){f' (selected by {chosen})' if chosen else ''}")
    metrics = {k.removeprefix("metric."): tags.pop(k) for k in sorted(tags) if k.startswith("metric.")}
    if metrics:
        lines.append("  metrics    " + ", ".join(f"{k} {val}" for k, val in metrics.items()))
    lineage = {k.removeprefix("imf.lineage."): tags.pop(k) for k in sorted(tags) if k.startswith("imf.lineage.")}
    lineage.setdefault("run_id", v.run_id)
    lines.append("  lineage    " + "; ".join(f"{k} {val}" for k, val in lineage.items() if val))
    config = tags.pop("imf.train_config", None)
    if config:
        lines.append("  config     " + config_changes(json.loads(config)))
    for key in sorted(k for k in tags if not k.startswith("imf.guidance.")):
        value = tags[key]
        lines.append(f"  {key}: {value if len(value) < 300 else value[:300] + '...'}")
    lines.append(f"  source     {v.source}")
    return "\n".join(lines)


def config_changes(config: dict) -> str:
    """The keys of a training config that differ from the defaults (the paper's recipe), as key=value."""
    from ..config import TrainConfig

    defaults = TrainConfig().flat()
    try:
        given = TrainConfig.model_validate(config).flat()
    except ValueError:
        return json.dumps(config)[:300]
    changed = [f"{k}={given[k]}" for k in given if given[k] != defaults.get(k)]
    return ", ".join(changed) + " (the rest: the paper's defaults)" if changed else "the paper's defaults"


def _show(args):
    client, _ = connect(args.tracking_uri)
    print(describe_version(client, resolve_version(client, args.ref)))


def _promote(args):
    client, _ = connect(args.tracking_uri)
    resolve_version(client, f"{args.name}/{args.version}")
    client.set_registered_model_alias(args.name, args.alias, args.version)
    print(f"{args.name}@{args.alias} -> version {args.version}")


def _register(args):
    from ..data.shards import read_manifest

    manifest = read_manifest(args.data) if args.data else None
    with tempfile.TemporaryDirectory(prefix="imf_checkpoint_") as tmp:
        v = register_checkpoint(local_checkpoint(args.checkpoint, Path(tmp)), args.name, args.tracking_uri,
                                manifest, aliases=tuple(args.alias or ["challenger"]), source=str(args.checkpoint))
    print(f"registered {v.name} version {v.version}: models:/{v.name}/{v.version}")


def local_checkpoint(checkpoint, tmp: Path) -> Path:
    """A checkpoint folder on this machine: itself, or the files registration reads (the network, its EMA and
    progress; not the optimizer state) copied from a bucket (s3://.../RUN/checkpoint_...)."""
    location = Location.of(checkpoint)
    if location.is_local:
        return location.local_path()
    files = [rel for rel in location.files() if not rel.startswith("optimizer")]
    if "model/config.json" not in files:
        raise UserError(f"{checkpoint} is not an imf training checkpoint (no model/config.json): give a "
                        "checkpoint_* folder of a run under --storage")
    for rel in files:
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(location.join(rel).read_bytes())
    return tmp


def _import_official(args):
    v = import_official(args.path, args.size, args.name, args.tracking_uri, vae=args.vae)
    print(f"registered {v.name} version {v.version} (official iMF-{args.size}): models:/{v.name}/{v.version}")


def register(steps):
    from ..cli import add_shared_flags

    parser = steps.add_parser("models", help="registered models: list, show, promote, register, import-official")
    add_shared_flags(parser, address="unused", tracking=True)
    sub = parser.add_subparsers(dest="models_command", required=True)
    p = sub.add_parser("list", help="registered models with their aliases")
    p.set_defaults(func=_list)
    p = sub.add_parser("show", help="one version: aliases, guidance, metrics, config")
    p.add_argument("ref", help="NAME, NAME@ALIAS or NAME/VERSION")
    p.set_defaults(func=_show)
    p = sub.add_parser("promote", help="point an alias at a version")
    p.add_argument("name")
    p.add_argument("version")
    p.add_argument("--alias", default="champion")
    p.set_defaults(func=_promote)
    p = sub.add_parser("register", help="register a training checkpoint's EMA weights")
    p.add_argument("checkpoint", help="a checkpoint folder written by `imf train` (local or s3://...)")
    p.add_argument("--name", required=True)
    p.add_argument("--data", default=None, help="the latent folder it was trained on (for codec and classes)")
    p.add_argument("--alias", action="append", help="alias(es) for the new version (default challenger)")
    p.set_defaults(func=_register)
    p = sub.add_parser("import-official", help="register a checkpoint released by the authors (iMF-*-2.pth)")
    p.add_argument("path")
    p.add_argument("--size", required=True, choices=list(OFFICIAL_GUIDANCE))
    p.add_argument("--name", required=True)
    p.add_argument("--vae", default=SD_VAE_HUB, help="SD-VAE folder or hub id used to decode")
    p.set_defaults(func=_import_official)
