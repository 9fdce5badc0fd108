"""The sample photo shipped inside the package, for `mfface fit --example`, the notebooks and docs.

`data/example_face.jpg` is a crop of the portrait of astronaut Eileen Collins (NASA, public domain),
as shipped by scikit-image (`skimage/data/astronaut.png`, 512x512): the square `CROP_BOX` around
the face, resized to `SIZE` px (Lanczos) and saved as JPEG (quality `QUALITY`).
`data/example_face.txt` records the source and licence.

    python -m mfface.sample astronaut.png mfface/data/example_face.jpg   # how it was made
"""
from __future__ import annotations

import hashlib
import sys
from importlib import resources
from pathlib import Path

EXAMPLE_FILE = "example_face.jpg"
NOTICE_FILE = "example_face.txt"
# scikit-image 0.24.0's skimage/data/astronaut.png (the same file as `skimage.data.astronaut()`).
SOURCE_SHA256 = "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"
CROP_BOX = (121, 20, 329, 228)  # left, top, right, bottom in the 512x512 source: the face and hair
SIZE = 320
QUALITY = 90


class SamplePhotoError(FileNotFoundError):
    """The sample photo is missing from this installation."""


def example_photo_path() -> Path:
    """Path of the sample portrait inside the installed package (a JPEG, ~320x320 px).

    Raises SamplePhotoError, naming the reinstall command, when the file is missing.
    """
    path = Path(str(resources.files("mfface").joinpath("data", EXAMPLE_FILE)))
    if not path.is_file():
        raise SamplePhotoError(f"the sample photo {path} is missing from this installation; "
                               f"reinstall mfface (`pip install --force-reinstall mfface`).")
    return path


def derive_example_photo(source: str | Path, out: str | Path) -> Path:
    """Make the sample photo from scikit-image's astronaut.png (checked by SHA256); atomic write."""
    from PIL import Image

    from mfface.atomic import atomic_path

    source, out = Path(source), Path(out)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    if digest != SOURCE_SHA256:
        raise ValueError(f"{source} is not scikit-image's astronaut.png (SHA256 {digest}, expected "
                         f"{SOURCE_SHA256}).")
    with Image.open(source) as image:
        crop = image.convert("RGB").crop(CROP_BOX).resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    with atomic_path(out) as tmp:
        crop.save(tmp, format="JPEG", quality=QUALITY, optimize=True)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m mfface.sample ASTRONAUT_PNG OUT_JPG", file=sys.stderr)
        return 2
    try:
        out = derive_example_photo(*args)
    except (OSError, ValueError) as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
