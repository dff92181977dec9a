"""Write a small folder of colour "photos" to try the own-images commands on.

    python scripts/example_photos.py photos/            # 5 classes x 30 photos, 160-320 px, .jpg and .png
    python scripts/example_photos.py photos/ --odd      # plus the odd cases real folders have
    python scripts/example_photos.py new_photos/ --flat --per-class 4 --seed 1   # unlabelled, for predict

Each class is one of scikit-image's sample photographs (cat, coffee, rocket, astronaut, galaxy);
each photo is a random crop of it (40-90 % of the side, random aspect and flip) saved at a random
size between 160 and 320 px, alternately as JPEG and PNG. ``--odd`` adds what a real folder
holds: a grayscale photo, an RGBA PNG, an upper-case ``.JPG``, a corrupt file, an empty class
folder and ``.DS_Store`` files. Needs scikit-image and Pillow (both in the ``all`` extra).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

CLASSES = {"cat": "chelsea", "coffee": "coffee", "rocket": "rocket", "astronaut": "astronaut",
           "galaxy": "hubble_deep_field"}


def _photo(source: np.ndarray, rng: np.random.Generator) -> object:
    from PIL import Image

    h, w = source.shape[:2]
    side = min(h, w)
    ch = int(side * rng.uniform(0.4, 0.9))
    cw = int(min(w, ch * rng.uniform(0.75, 1.33)))
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = source[top:top + ch, left:left + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    out_h = int(rng.integers(160, 321))
    out_w = int(np.clip(out_h * cw / ch, 160, 320))
    return Image.fromarray(np.ascontiguousarray(crop)).resize((out_w, out_h), Image.BICUBIC)


def write(out: Path, per_class: int = 30, seed: int = 0, odd: bool = False, flat: bool = False) -> list[Path]:
    """Write the photos; returns their paths."""
    import skimage.data

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, source_name in CLASSES.items():
        source = getattr(skimage.data, source_name)()
        folder = out if flat else out / name
        folder.mkdir(exist_ok=True)
        for i in range(per_class):
            ext = ".jpg" if i % 2 == 0 else ".png"
            path = folder / (f"{name}_{i:03d}{ext}" if flat else f"{i:03d}{ext}")
            _photo(source, rng).save(path)  # type: ignore[attr-defined]
            written.append(path)
    if odd and not flat:
        from PIL import Image

        _photo(skimage.data.chelsea(), rng).convert("L").save(out / "cat" / "gray.jpg")  # type: ignore[attr-defined]
        _photo(skimage.data.coffee(), rng).convert("RGBA").save(out / "coffee" / "rgba.png")  # type: ignore[attr-defined]
        _photo(skimage.data.rocket(), rng).save(out / "rocket" / "UPPER.JPG")  # type: ignore[attr-defined]
        (out / "astronaut" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        (out / "empty_class").mkdir(exist_ok=True)
        for folder in (out, out / "cat"):
            (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        del Image
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="the folder to write (created)")
    p.add_argument("--per-class", type=int, default=30, help="photos per class (default 30)")
    p.add_argument("--seed", type=int, default=0, help="random crops' seed (default 0)")
    p.add_argument("--odd", action="store_true", help="add grayscale/RGBA/.JPG/corrupt/empty/.DS_Store cases")
    p.add_argument("--flat", action="store_true", help="no class subfolders (images to predict)")
    a = p.parse_args()
    paths = write(a.out, a.per_class, a.seed, a.odd, a.flat)
    print(f"wrote {len(paths)} photos of {len(CLASSES)} classes to {a.out}")


if __name__ == "__main__":
    main()
