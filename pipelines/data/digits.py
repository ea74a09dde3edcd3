"""The embedded dataset: scikit-learn's digits (1797 labelled 8x8 images, 10 classes), and `imf data`.

It ships with a dependency, so the demo and the tests need no download. Every third digit of each
class (in scikit-learn's order) is held out for evaluation: split "test" (596 images) is what
`--reference digits` compares samples with; split "train" (1201 images) is what `imf data embedded`
writes for training. Pixels are scikit-learn's 0..16 values scaled to 0..255.
"""

import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import UserError
from ..storage import Location
from .images import DATASET_MARKER

NAME = "sklearn-digits"
SPLITS = ("train", "test", "all")
HELD_OUT_EVERY = 3  # the 3rd, 6th, ... digit of each class is held out


def held_out_mask(labels: np.ndarray) -> np.ndarray:
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        rows = np.nonzero(labels == c)[0]
        mask[rows[np.arange(len(rows)) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]] = True
    return mask


def digits(split: str = "train", with_index: bool = False):
    """uint8 images (N, 8, 8) and int64 labels (N,) of one split (and, with_index, each image's position in
    scikit-learn's order)."""
    from sklearn.datasets import load_digits

    if split not in SPLITS:
        raise UserError(f"digits split {split!r}: choose one of {', '.join(SPLITS)}")
    data = load_digits()
    pixels = np.rint(data.images * (255.0 / 16.0)).astype(np.uint8)
    labels = data.target.astype(np.int64)
    index = np.arange(len(labels))
    if split != "all":
        index = index[held_out_mask(labels) == (split == "test")]
    return (pixels[index], labels[index], index) if with_index else (pixels[index], labels[index])


def write_embedded(out, split: str = "train") -> dict:
    """One split of the digits as a PNG class-folder tree (class folders 0..9)."""
    from PIL import Image

    out = Location.of(out).check_writable("--out")
    names = [str(c) for c in range(10)]
    if out.is_file():
        raise UserError(f"--out {out} is a file: pass a folder for the class-folder tree")
    present = {rel.split("/")[0] for rel in out.files()} | set(out.dirs() if out.is_dir() else [])
    strangers = sorted(present - set(names + [DATASET_MARKER]))
    if strangers:
        raise UserError(f"--out {out} already holds {', '.join(strangers[:3])}: pass a new or empty folder, "
                        "so that the tree holds the digit classes only")
    pixels, labels, index = digits(split, with_index=True)

    def write(i, image, label):  # named by the position in scikit-learn's order
        buffer = io.BytesIO()
        Image.fromarray(image, "L").save(buffer, format="PNG")
        out.join(str(label), f"{i:04d}.png").write_bytes(buffer.getvalue())

    # A bucket takes one request per image: 16 in flight rather than one at a time.
    with ThreadPoolExecutor(max_workers=1 if out.is_local else 16) as pool:
        list(pool.map(write, index, pixels, labels))
    (out / DATASET_MARKER).write_text(json.dumps({"dataset": NAME, "split": split}))
    return {"dataset": NAME, "split": split, "images": len(pixels), "classes": len(names),
            "size": list(pixels.shape[1:])}


def _embedded(args):
    info = write_embedded(args.out, args.split)
    print(f"imf data: wrote {info['images']} {info['size'][0]}x{info['size'][1]} PNG images of {info['classes']} "
          f"classes ({info['dataset']}, split {info['split']}) to {args.out}; encode them with "
          f"`imf encode --images {args.out} --out LATENTS --codec pixels --resolution 8 --grayscale`")


def register(steps):
    parser = steps.add_parser("data", help="write the embedded dataset as a class-folder image tree")
    kinds = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    embedded = kinds.add_parser("embedded", help="scikit-learn's digits: 1797 labelled 8x8 images, 10 classes "
                                                 "(no download)")
    embedded.add_argument("--out", required=True,
                          help="folder or bucket prefix (s3://...) for the class-folder tree (PNG)")
    embedded.add_argument("--split", choices=SPLITS, default="train",
                          help="train (1201, the default), test (596 held out for evaluation) or all")
    embedded.set_defaults(func=_embedded)
