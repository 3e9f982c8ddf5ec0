"""Strong copy attacks, as in the "strong" block of INRIA Copydays (Jégou et al. 2008): what people do to an
image they re-post. Each attack maps an RGB image and a seeded ``random.Random`` to a new RGB image, so the
same seed gives the same pixels (and, through Pillow's encoder, the same file bytes).
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps
from torchvision.transforms.v2 import functional as TF

WORDS = ("copy", "sale", "photo", "news", "look", "best", "2026", "free", "original", "meme", "lol", "share",
         "wow", "daily", "top", "viral", "shop", "club", "hd", "stock")


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randrange(256) for _ in range(3))


def crop(image: Image.Image, rng: random.Random) -> Image.Image:
    """Keep 30 to 80% of the area, aspect ratio within 3:4 .. 4:3 of the original's, anywhere in the image."""
    width, height = image.size
    area = rng.uniform(0.3, 0.8) * width * height
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    w = max(1, min(width, round(math.sqrt(area * ratio))))
    h = max(1, min(height, round(area / w)))
    left, top = rng.randint(0, width - w), rng.randint(0, height - h)
    return image.crop((left, top, left + w, top + h))


def rotate(image: Image.Image, rng: random.Random) -> Image.Image:
    """A quarter or half turn, or a tilt of 10 to 45 degrees either way with the corners filled."""
    if rng.random() < 0.5:
        return image.rotate(rng.choice((90, 180, 270)), expand=True)
    angle = rng.uniform(10, 45) * rng.choice((-1, 1))
    return image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=_colour(rng))


def perspective(image: Image.Image, rng: random.Random) -> Image.Image:
    """Each corner pulled inwards by up to 20-50% of half the side: a photo of a screen or a page."""
    width, height = image.size
    strength = rng.uniform(0.2, 0.5)
    dx, dy = strength * width / 2, strength * height / 2
    start = [[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]]
    signs = [(1, 1), (-1, 1), (-1, -1), (1, -1)]
    end = [[round(x + sx * rng.uniform(0, dx)), round(y + sy * rng.uniform(0, dy))]
           for (x, y), (sx, sy) in zip(start, signs)]
    return TF.perspective(image, start, end, interpolation=TF.InterpolationMode.BILINEAR, fill=list(_colour(rng)))


def blur(image: Image.Image, rng: random.Random) -> Image.Image:
    """Gaussian blur of radius 0.5 to 2% of the longer side."""
    return image.filter(ImageFilter.GaussianBlur(max(1.0, rng.uniform(0.005, 0.02) * max(image.size))))


def jpeg(image: Image.Image, rng: random.Random) -> Image.Image:
    """Re-encoded as JPEG at quality 3 to 30 (blocks and ringing)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=rng.randint(3, 30))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def colour(image: Image.Image, rng: random.Random) -> Image.Image:
    """Two of: brightness, contrast, saturation, a hue rotation, grey, posterisation, inversion."""
    def hue(im: Image.Image) -> Image.Image:
        h, s, v = im.convert("HSV").split()
        shift = rng.randint(40, 215)
        return Image.merge("HSV", (h.point(lambda x: (x + shift) % 256), s, v)).convert("RGB")

    changes = [
        lambda im: ImageEnhance.Brightness(im).enhance(rng.choice((rng.uniform(0.4, 0.7), rng.uniform(1.3, 1.8)))),
        lambda im: ImageEnhance.Contrast(im).enhance(rng.choice((rng.uniform(0.3, 0.7), rng.uniform(1.4, 2.0)))),
        lambda im: ImageEnhance.Color(im).enhance(rng.choice((rng.uniform(0.0, 0.4), rng.uniform(1.6, 2.5)))),
        hue,
        lambda im: ImageOps.grayscale(im).convert("RGB"),
        lambda im: ImageOps.posterize(im, rng.randint(2, 4)),
        ImageOps.invert,
    ]
    for change in rng.sample(changes, 2):
        image = change(image)
    return image


def print_scan(image: Image.Image, rng: random.Random) -> Image.Image:
    """Printed and scanned: softened, tilted a little, on tinted paper with lower contrast, with sensor noise."""
    image = image.filter(ImageFilter.GaussianBlur(max(0.6, 0.003 * max(image.size))))
    image = image.rotate(rng.uniform(-4, 4), resample=Image.Resampling.BILINEAR, expand=True, fillcolor=(245, 242, 232))
    pixels = np.asarray(image, dtype=np.float32)
    paper = np.array([rng.uniform(225, 255), rng.uniform(215, 250), rng.uniform(190, 240)], dtype=np.float32)
    contrast = rng.uniform(0.6, 0.85)
    pixels = pixels * contrast + paper * (1 - contrast)
    noise = np.random.default_rng(rng.getrandbits(64)).normal(0, rng.uniform(5, 14), pixels.shape)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))


def paint(image: Image.Image, rng: random.Random) -> Image.Image:
    """Painted over: 3 to 12 strokes, boxes and blobs in random colours."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    width, height = image.size
    side = min(width, height)
    for _ in range(rng.randint(3, 12)):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        size = rng.uniform(0.05, 0.25) * side
        shape = rng.choice(("line", "box", "blob"))
        if shape == "line":
            end = (x + rng.uniform(-2, 2) * size, y + rng.uniform(-2, 2) * size)
            draw.line([(x, y), end], fill=_colour(rng), width=max(1, round(rng.uniform(0.01, 0.04) * side)))
        elif shape == "box":
            draw.rectangle([x, y, x + size, y + size * rng.uniform(0.3, 1.5)], fill=_colour(rng))
        else:
            draw.ellipse([x, y, x + size, y + size * rng.uniform(0.5, 1.5)], fill=_colour(rng))
    return image


def text(image: Image.Image, rng: random.Random) -> Image.Image:
    """One to three captions of random words, 8 to 20% of the image high, outlined like a meme."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    width, height = image.size
    for _ in range(rng.randint(1, 3)):
        size = max(6, round(rng.uniform(0.08, 0.2) * height))
        font = _font(size)
        caption = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))).upper()
        position = (rng.uniform(-0.1, 0.7) * width, rng.uniform(0, 0.85) * height)
        draw.text(position, caption, font=font, fill=_colour(rng), stroke_width=max(1, size // 12),
                  stroke_fill=_colour(rng))
    return image


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, TypeError, OSError):  # Pillow built without FreeType: its small bitmap font
        return ImageFont.load_default()


def flip(image: Image.Image, rng: random.Random) -> Image.Image:
    """Mirrored left to right."""
    return ImageOps.mirror(image)


ATTACKS = {
    "crop": crop, "rotate": rotate, "perspective": perspective, "blur": blur, "jpeg": jpeg, "colour": colour,
    "print-scan": print_scan, "paint": paint, "text": text, "flip": flip,
}


def strong_copy(image: Image.Image, rng: random.Random, min_attacks: int = 2,
                max_attacks: int = 4) -> tuple[Image.Image, list[str]]:
    """``image`` after 2 to 4 different attacks in random order; returns the copy and the attacks' names.
    JPEG, when drawn, comes last, as a re-post's final save would."""
    names = rng.sample(sorted(ATTACKS), rng.randint(min_attacks, max_attacks))
    if "jpeg" in names:
        names = [n for n in names if n != "jpeg"] + ["jpeg"]
    for name in names:
        image = ATTACKS[name](image, rng)
        if image.width < 2 or image.height < 2:
            image = image.resize((max(2, image.width), max(2, image.height)))
    return image, names
