"""Twelve colour photographs that ship inside PyPI packages (no download), saved as RGB PNGs for explain.py and
benchmarks/rex_vs_rexxai.py's photograph mode: `python examples/photos.py DIR`.

Sources: scikit-image's bundled `skimage.data` files (astronaut, chelsea, coffee, rocket, hubble_deep_field,
immunohistochemistry, retina, motorcycle_left), matplotlib's sample data (grace_hopper.jpg,
Minduka_Present_Blue_Pack.png) and scikit-learn's sample images (china.jpg, flower.jpg). scikit-image is not a
dependency of this project: `pip install scikit-image` first. The files are copied pixel for pixel (alpha dropped,
greyscale never occurs), in a fixed order and with fixed names, so the folder is the same on every machine with the
same package versions; the sizes are left as they are (the benchmark and explain.py resize and centre-crop).
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

#: name -> (package, file inside its data folder)
PHOTOS = {
    "astronaut": ("skimage", "astronaut.png"),
    "chelsea": ("skimage", "chelsea.png"),
    "coffee": ("skimage", "coffee.png"),
    "rocket": ("skimage", "rocket.jpg"),
    "hubble_deep_field": ("skimage", "hubble_deep_field.jpg"),
    "immunohistochemistry": ("skimage", "ihc.png"),
    "retina": ("skimage", "retina.jpg"),
    "motorcycle": ("skimage", "motorcycle_left.png"),
    "grace_hopper": ("matplotlib", "grace_hopper.jpg"),
    "present_blue_pack": ("matplotlib", "Minduka_Present_Blue_Pack.png"),
    "china": ("sklearn", "china.jpg"),
    "flower": ("sklearn", "flower.jpg"),
}


def _source(package: str, name: str) -> Path:
    if package == "skimage":
        import skimage.data

        folder = Path(skimage.data.data_dir)
    elif package == "matplotlib":
        import matplotlib

        folder = Path(matplotlib.get_data_path()) / "sample_data"
    else:
        import sklearn.datasets

        folder = Path(sklearn.datasets.__file__).parent / "images"
    path = folder / name
    if not path.is_file():
        raise SystemExit(f"error: {name} is not bundled with this {package} ({path})")
    return path


def save_photos(out: str | Path) -> list[Path]:
    """The twelve photographs as RGB PNGs in `out`; returns their paths in the fixed order."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (package, file) in PHOTOS.items():
        with Image.open(_source(package, file)) as img:
            rgb = np.asarray(img.convert("RGB"))
        path = out / f"{name}.png"
        Image.fromarray(rgb, "RGB").save(path)
        paths.append(path)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="folder for the PNGs (created)")
    args = p.parse_args()
    for path in save_photos(args.out):
        with Image.open(path) as img:
            size = img.size
        digest = hashlib.sha256(np.asarray(Image.open(path)).tobytes()).hexdigest()[:12]
        print(f"{path}  {size[0]}x{size[1]}  pixels sha256 {digest}")


if __name__ == "__main__":
    main()
