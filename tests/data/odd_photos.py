"""A folder of colour photos as a user has them: mixed sizes and formats, and the odd cases.

Classes differ by colour (learnable in a few steps at 16-32 px): ``cat`` red, ``dog`` green,
``owl`` blue. Sizes 20-48 px, .jpg / .png / .JPG, one grayscale, one RGBA, one corrupt file,
an empty class folder (``zebra``) and ``.DS_Store`` files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLOURS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "owl": (40, 40, 200)}


def make_odd_folder(root: Path, per_class: int = 10, seed: int = 0) -> dict[str, Path]:
    """Write the folder; returns the paths of the odd files (``corrupt``, ``gray``, ``rgba``,
    ``upper``)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    odd: dict[str, Path] = {}
    for c, (r, g, b) in COLOURS.items():
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        (d / ".DS_Store").write_bytes(b"\x00\x01junk")
        for i in range(per_class):
            h, w = int(rng.integers(20, 49)), int(rng.integers(20, 49))
            base = np.array([r, g, b], dtype=np.float64)
            img = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
            ext = ".png" if i % 2 else ".jpg"
            if c == "cat" and i == 0:
                ext = ".JPG"
                odd["upper"] = d / f"{c}{i:02d}{ext}"
            pil = Image.fromarray(img, "RGB")
            if c == "dog" and i == 1:
                pil = pil.convert("L")
                odd["gray"] = d / f"{c}{i:02d}{ext}"
            if c == "owl" and i == 1:
                pil = pil.convert("RGBA")
                odd["rgba"] = d / f"{c}{i:02d}{ext}"
            pil.save(d / f"{c}{i:02d}{ext}", quality=95)
    bad = root / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    odd["corrupt"] = bad
    (root / "zebra").mkdir()
    (root / ".DS_Store").write_bytes(b"junk")
    return odd
