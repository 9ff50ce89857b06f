"""load_image: every mode comes out RGB with its content intact; every unusable file is one clear line."""

import io
import os
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

from mintclip.data import decode
from mintclip.data.decode import MAX_PIXELS, DecodeError, _to_rgb, load_image
from tests.helpers import write_png


PALETTE = [10, 20, 30, 200, 100, 50, 0, 255, 0]


def blocks(width=64, height=32, size=16):
    """Flat colour blocks, distinct everywhere, that survive JPEG compression nearly exactly."""
    ys, xs = np.mgrid[:height, :width] // size
    return np.stack([xs * 60 + 20, ys * 120 + 40, (xs + ys) * 40 + 30], axis=-1).astype(np.uint8)


def pixels(image):
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


@pytest.mark.parametrize("suffix", ["jpg", "png"])
def test_rgb(tmp_path, suffix):
    array = blocks()
    path = tmp_path / f"rgb.{suffix}"
    Image.fromarray(array).save(path, quality=100, subsampling=0)
    out = pixels(load_image(path))
    assert out.shape == array.shape
    assert np.abs(out - array).max() <= (0 if suffix == "png" else 8)


def test_gray_and_bilevel(tmp_path):
    Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8)).save(tmp_path / "l.png")
    assert pixels(load_image(tmp_path / "l.png")).tolist() == [[[0] * 3, [77] * 3, [255] * 3]]
    Image.fromarray(np.array([[True, False]])).save(tmp_path / "bilevel.png")
    assert Image.open(tmp_path / "bilevel.png").mode == "1"
    assert pixels(load_image(tmp_path / "bilevel.png")).tolist() == [[[255] * 3, [0] * 3]]


def test_alpha_is_dropped_not_composited(tmp_path):
    """As torchvision's ImageFolder loader: convert("RGB") keeps the colour under a transparent pixel."""
    Image.fromarray(np.array([[[10, 20, 30, 0], [40, 50, 60, 255]]], dtype=np.uint8)).save(tmp_path / "a.png")
    assert pixels(load_image(tmp_path / "a.png")).tolist() == [[[10, 20, 30], [40, 50, 60]]]
    Image.fromarray(np.array([[[90, 0], [150, 128]]], dtype=np.uint8), "LA").save(tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    assert pixels(load_image(tmp_path / "la.png")).tolist() == [[[90] * 3, [150] * 3]]


@pytest.mark.parametrize("suffix, transparency", [("png", None), ("png", 0), ("png", b"\x00\x80"),
                                                   ("gif", None), ("gif", 0)])  # bytes: per-entry alpha
def test_palette(tmp_path, suffix, transparency):
    image = Image.new("P", (3, 1))
    image.putpalette(PALETTE)
    image.putdata([0, 1, 2])
    if transparency is not None:
        image.info["transparency"] = transparency
    image.save(tmp_path / f"p.{suffix}")
    assert Image.open(tmp_path / f"p.{suffix}").mode == "P"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even PIL's "transparency expressed in bytes" one
        out = load_image(tmp_path / f"p.{suffix}")
    assert pixels(out).tolist() == [[PALETTE[0:3], PALETTE[3:6], PALETTE[6:9]]]


def test_palette_alpha_mode():
    """Pillow writes no "PA" file, so check the conversion on its own."""
    image = Image.new("PA", (1, 1))
    image.putpalette(PALETTE)
    image.putpixel((0, 0), (1, 0))
    assert pixels(_to_rgb(image)).tolist() == [[PALETTE[3:6]]]


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    assert np.abs(pixels(load_image(tmp_path / "cmyk.jpg")) - [255, 0, 0]).max() <= 2


def test_16bit_gray_is_rescaled_not_clipped(tmp_path):
    values = np.array([[0, 300, 40000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    assert Image.open(tmp_path / "g16.png").convert("L").getpixel((1, 0)) == 255  # what we must not do
    assert pixels(load_image(tmp_path / "g16.png"))[..., 0].tolist() == [[0, 1, 156, 255]]
    big_endian = Image.fromarray(values.astype(">u2"))
    assert big_endian.mode == "I;16B"
    assert pixels(_to_rgb(big_endian))[..., 0].tolist() == [[0, 1, 156, 255]]


def test_32bit_int_tiff_saturates_outside_16_bits(tmp_path):
    Image.fromarray(np.array([[-5, 300, 40000, 70000]], dtype=np.int32)).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    assert pixels(load_image(tmp_path / "i.tif"))[..., 0].tolist() == [[0, 1, 156, 255]]


def test_16bit_rgb_png(tmp_path):
    """Pillow cannot write one, so write it by hand; Pillow 13 reads it as 8-bit RGB (the high byte)."""
    fixed = np.array([[[0, 300, 65535], [40000, 65535, 0]]], dtype=np.uint16)
    assert pixels(load_image(write_png(tmp_path / "rgb16.png", 2, 1, 16, 2, fixed))).tolist() == [
        [[0, 1, 255], [156, 255, 0]]]
    noise = np.random.default_rng(0).integers(0, 65536, (16, 16, 3)).astype(np.uint16)
    out = pixels(load_image(write_png(tmp_path / "noise16.png", 16, 16, 16, 2, noise)))
    assert np.abs(out - np.rint(noise / 65535 * 255)).max() <= 1  # high byte vs rounding: at most 1 apart


def test_float_tiff_stretches_its_own_range(tmp_path):
    Image.fromarray(np.array([[-1.5, 0.0, 2.5]], dtype=np.float32)).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    assert pixels(load_image(tmp_path / "f.tif"))[..., 0].tolist() == [[0, 96, 255]]
    Image.fromarray(np.array([[np.nan, 1.0, np.inf, 3.0]], dtype=np.float32)).save(tmp_path / "odd.tif")
    assert pixels(load_image(tmp_path / "odd.tif"))[..., 0].tolist() == [[0, 0, 255, 255]]
    Image.fromarray(np.full((2, 2), 7.0, dtype=np.float32)).save(tmp_path / "flat.tif")
    assert pixels(load_image(tmp_path / "flat.tif")).max() == 0


@pytest.mark.parametrize("orientation, turns", [(6, -1), (3, 2), (1, 0)])  # 6: 90 degrees clockwise
def test_exif_orientation(tmp_path, orientation, turns):
    array = blocks()
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(array).save(tmp_path / "phone.jpg", exif=exif, quality=100, subsampling=0)
    out = pixels(load_image(tmp_path / "phone.jpg"))
    expected = np.rot90(array, k=turns)
    assert out.shape == expected.shape
    assert np.abs(out - expected).max() <= 8


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory):
    image = Image.new("RGB", (4000, 3000), (90, 140, 200))
    image.paste((250, 20, 20), (0, 0, 2000, 1500))
    path = tmp_path_factory.mktemp("big") / "big.jpg"
    image.save(path)
    return path


@pytest.mark.parametrize("min_side, size", [(None, (4000, 3000)), (800, (2000, 1500)), (1400, (2000, 1500)),
                                            (1600, (4000, 3000)), (5000, (4000, 3000))])
def test_draft_keeps_at_least_min_side_and_never_upscales(big_jpeg, min_side, size):
    out = load_image(big_jpeg, min_side=min_side)
    assert out.size == size
    assert min(out.size) >= min(min_side or 0, 3000)
    corners = [out.getpixel((0, 0)), out.getpixel((out.width - 1, out.height - 1))]
    assert np.abs(np.array(corners) - [[250, 20, 20], [90, 140, 200]]).max() <= 4


def test_min_side_leaves_other_formats_whole(tmp_path):
    Image.new("RGB", (1000, 900)).save(tmp_path / "big.png")
    assert load_image(tmp_path / "big.png", min_side=200).size == (1000, 900)


def test_result_is_loaded_and_file_closed(tmp_path):
    Image.fromarray(blocks()).save(tmp_path / "x.jpg")
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    image = load_image(tmp_path / "x.jpg")
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) == before
    os.remove(tmp_path / "x.jpg")
    assert np.asarray(image).shape == (32, 64, 3)


def test_bomb_between_pils_warning_and_error_limits_warns_nothing_and_changes_no_global(tmp_path):
    path = write_png(tmp_path / "huge.png", 10_000, 10_000, 1, 0)  # header only: 1e8 pixels, > PIL's 89.5e6
    state = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DecodeError, match="image too large: 10000 x 10000 pixels, limit 1000000$"):
            load_image(path, max_pixels=1_000_000)
        with pytest.raises(DecodeError, match="truncated"):  # under our default limit: decoded, and broken
            load_image(path)
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters)) == state
    assert MAX_PIXELS == 2 * Image.MAX_IMAGE_PIXELS


def make_bad(tmp_path, kind):
    """(path, load_image keyword arguments, words the reason must contain) for one unusable file."""
    jpeg = tmp_path / "real.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(jpeg)
    if kind == "truncated jpeg":
        (tmp_path / "cut.jpg").write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
        return tmp_path / "cut.jpg", {}, "truncated"
    if kind == "truncated png":
        Image.open(jpeg).save(tmp_path / "full.png")
        (tmp_path / "cut.png").write_bytes((tmp_path / "full.png").read_bytes()[:2000])
        return tmp_path / "cut.png", {}, "truncated"
    if kind == "text":
        (tmp_path / "notes.jpg").write_text("not a picture\nreally\n")
        return tmp_path / "notes.jpg", {}, "not an image file"
    if kind == "empty":
        (tmp_path / "empty.png").write_bytes(b"")
        return tmp_path / "empty.png", {}, "empty file"
    if kind == "missing":
        return str(tmp_path / "nowhere.jpg"), {}, "no such file"
    if kind == "directory":
        (tmp_path / "folder.jpg").mkdir()
        return tmp_path / "folder.jpg", {}, "is a directory"
    if kind == "bomb":  # beyond 2x PIL's limit: PIL's open() itself refuses, and says only the pixel count
        return write_png(tmp_path / "bomb.png", 20_000, 20_000, 1, 0), {}, "image too large: 400000000 pixels"
    if kind == "small limit":
        return jpeg, {"max_pixels": 4000}, "image too large: 64 x 64 pixels, limit 4000"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated jpeg", "truncated png", "text", "empty", "missing", "directory",
                                  "bomb", "small limit"])
def test_unusable_file_is_one_line_starting_with_its_path(tmp_path, kind):
    path, kwargs, words = make_bad(tmp_path, kind)
    with pytest.raises(DecodeError) as info:
        load_image(path, **kwargs)
    error = info.value
    assert isinstance(error, ValueError)
    assert error.path == str(path)
    assert words in error.reason
    assert str(error) == f"{path}: {error.reason}"
    assert "\n" not in str(error)


def test_permission_denied(tmp_path, monkeypatch):
    path = tmp_path / "locked.png"
    Image.new("RGB", (4, 4)).save(path)
    os.chmod(path, 0)
    if getattr(os, "geteuid", lambda: 0)() == 0:  # root reads whatever the mode: have open() refuse instead
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied", str(path))
        monkeypatch.setattr(decode, "open", refuse, raising=False)
    with pytest.raises(DecodeError, match="locked.png: permission denied$"):
        load_image(path)


@pytest.mark.parametrize("format", ["JPEG", "PNG", "GIF"])
def test_any_cut_fails_cleanly_or_loses_no_pixel(tmp_path, format):
    """Cut anywhere: a DecodeError, or (a lost trailer after complete pixel data) the whole image."""
    buffer = io.BytesIO()
    Image.fromarray(blocks()).save(buffer, format)
    data = buffer.getvalue()
    whole = pixels(Image.open(io.BytesIO(data)).convert("RGB"))
    for end in [*range(0, len(data), max(1, len(data) // 40)), len(data) - 1]:
        (tmp_path / "cut").write_bytes(data[:end])
        try:
            assert (pixels(load_image(tmp_path / "cut")) == whole).all(), end
        except DecodeError as error:
            assert "\n" not in str(error)
