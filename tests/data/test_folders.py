"""User trees and CSVs: content decides what an image is, wrong trees are one line, never a wrong number."""

import os

import numpy as np
import pytest
from PIL import Image

from mintclip.data.catalog import check_data, open_dataset
from mintclip.data.decode import DecodeError, image_format
from mintclip.data.folders import DatasetError
from mintclip.data.loader import stream_images
from tests.helpers import make_tree, write_image, write_png


def one_line_error(root, set_id, **kwargs) -> str:
    with pytest.raises(DatasetError) as info:
        open_dataset(root, set_id, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def noise_jpeg(path, size=64):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def test_image_format_reads_content_not_names(tmp_path):
    write_image(tmp_path / "photo.jpg")
    Image.new("RGB", (2, 2)).save(tmp_path / "really_png.jpg", "PNG")
    Image.new("P", (2, 2)).save(tmp_path / "anim.gif")
    Image.new("RGB", (2, 2)).save(tmp_path / "no_extension", "BMP")
    (tmp_path / "text.jpg").write_text("not a picture")
    (tmp_path / "zero.jpg").write_bytes(b"")
    assert [image_format(tmp_path / n) for n in ("photo.jpg", "really_png.jpg", "anim.gif", "no_extension")] \
        == ["JPEG", "PNG", "GIF", "BMP"]
    assert image_format(tmp_path / "text.jpg") is image_format(tmp_path / "zero.jpg") is None
    assert image_format(tmp_path / "missing.jpg") is None


def test_domains_under_the_root_are_refused_with_the_ids_to_pass(tmp_path):
    make_tree(tmp_path / "art", ["dog", "elephant"])
    make_tree(tmp_path / "photo", ["dog", "elephant", "horse"])
    message = one_line_error(tmp_path, "folder")
    assert "art, photo look like domains" in message and "dog, elephant" in message
    assert message.endswith(f"keep {tmp_path} as the data root and pass --test_sets folder:art/folder:photo")
    assert open_dataset(tmp_path, "folder:photo").classnames == ["dog", "elephant", "horse"]
    deeper = tmp_path / "deeper"  # a domain's images one folder further down are still the domain layout
    make_tree(deeper / "clipart" / "images", ["cat", "dog"])
    make_tree(deeper / "sketch" / "images", ["cat", "dog"])
    assert "look like domains" in one_line_error(deeper, "folder")


def test_nested_folders_of_genuine_classes_count_for_their_class(tmp_path):
    make_tree(tmp_path / "animal", ["n01", "n02"])  # coarse classes: sub-folders with names of their own
    make_tree(tmp_path / "vehicle", ["n03"])
    ds = open_dataset(tmp_path, "folder")
    assert ds.classnames == ["animal", "vehicle"] and [label for _, label in ds.samples] == [0, 0, 1]
    mixed = make_tree(tmp_path / "mixed", ["cat", "dog"])
    write_image(mixed / "cat" / "more" / "img_9.jpg")
    ds = open_dataset(mixed, "folder")
    assert [str(p.relative_to(mixed)) for p, _ in ds.samples] == ["cat/img_0.jpg", "cat/more/img_9.jpg",
                                                                  "dog/img_0.jpg"]


def test_a_single_class_folder_is_refused_with_a_hint(tmp_path):
    make_tree(tmp_path / "one", ["cat"], per_class=2)
    assert "only one class folder (cat), and accuracy over a single class means nothing" \
        in one_line_error(tmp_path / "one", "folder")
    make_tree(tmp_path / "office" / "office_home", ["bike", "chair"])
    message = one_line_error(tmp_path / "office", "folder")
    assert "one class folder, office_home, whose images are all in its sub-folders (bike, chair)" in message
    assert message.endswith(f"open {tmp_path / 'office' / 'office_home'} instead")


def test_classnames_pairs_map_by_folder_in_any_order(tmp_path):
    tree = make_tree(tmp_path / "tree", ["n01443537", "n01484850", "n01491361", "n01494475"])
    (tree / "classnames.txt").write_text("n01484850\tgreat white shark\nn01443537\tgoldfish\n"
                                         "n01494475\thammerhead\nn01491361\ttiger shark\n")
    ds = open_dataset(tree, "folder")
    assert ds.classnames == ["goldfish", "great white shark", "tiger shark", "hammerhead"]
    assert ds.mapping_preview() == "classes: n01443537 -> goldfish, n01484850 -> great white shark, " \
                                   "n01491361 -> tiger shark, ... (4)"
    assert ds.mapping_preview(n=4).endswith("n01494475 -> hammerhead (4)")
    (tree / "classnames.txt").write_text("n01491361 tiger shark\nn01443537 goldfish\nn01484850 great white shark\n"
                                         "n01494475 hammerhead\n")
    assert open_dataset(tree, "folder").classnames == ds.classnames


@pytest.mark.parametrize("text, words", [
    ("a cat\na dog\na fox\n", "3 names for 2 class folders; give one name per class folder in sorted folder order"),
    ("dog\ncat\n", "line 1 is 'dog', the name of folder 'dog', but names by position go to folder 'cat'"),
    ("cat\ta cat\ndgo\ta dog\n", ":2: 'dgo' is not a class folder beside it"),
    ("cat a cat\ncat a kitten\ndog a dog\n", ":2: class folder 'cat' is named a second time"),
    ("cat\ta cat\n", "no name for 1 of 2 class folders: dog"),
    ("cat\ta cat\ndog a dog\n", ":2: expected 'folder<TAB>name' as on the other lines, got 'dog a dog'"),
    ("cat a cat\ndog\n", ":2: expected 'folder name' as on the other lines, got 'dog'"),
])
def test_classnames_that_could_rename_classes_are_errors(tmp_path, text, words):
    tree = make_tree(tmp_path / "tree", ["cat", "dog"])
    (tree / "classnames.txt").write_text(text)
    assert words in one_line_error(tree, "folder")


def test_plain_classnames_go_by_sorted_folder_order(tmp_path):
    tree = make_tree(tmp_path / "tree", ["cat", "dog", "red_fox"])
    (tree / "classnames.txt").write_text("house cat\ndog\nred fox\n")
    ds = open_dataset(tree, "folder")
    assert ds.classnames == ["house cat", "dog", "red fox"]
    assert ds.mapping_preview(2) == "classes: cat -> house cat, dog -> dog, ... (3)"


def test_non_images_are_skipped_and_listed_unless_strict(tmp_path):
    tree = make_tree(tmp_path / "tree", ["cat", "dog"], per_class=2)
    (tree / "cat" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + bytes(60))
    (tree / "dog" / "notes.txt").write_text("taken in 2019")
    (tree / "labels.csv").write_text("x")  # beside the class folders
    (tree / "README.md").write_text("benign: not listed")
    (tree / "dog" / ".DS_Store").write_bytes(b"\0")  # hidden: ignored
    ds = open_dataset(tree, "folder")
    assert len(ds) == 4 and ds.skipped_files == [tree / "labels.csv", tree / "cat" / "Thumbs.db",
                                                 tree / "dog" / "notes.txt"]
    assert ds.summary().endswith(", 3 non-image file(s) skipped")
    assert ds.notes == ["skipped 3 file(s) that are not images (by their first bytes): labels.csv, "
                        "cat/Thumbs.db, dog/notes.txt"]
    message = one_line_error(tree, "folder", strict=True)
    assert message == (f"{tree}: 3 file(s) that are not images (by their first bytes): labels.csv, cat/Thumbs.db, "
                       "dog/notes.txt; remove them, or drop --strict to skip them")
    (_, found, line), = check_data(tree, ["folder"])
    assert found is not None and line.endswith("3 non-image file(s) skipped; images that fail to decode are "
                                               "skipped at run time")
    (_, found, line), = check_data(tree, ["folder"], strict=True)
    assert found is None and line.startswith("folder: PROBLEM: ") and "drop --strict" in line
    clean = make_tree(tmp_path / "clean", ["cat", "dog"])
    assert check_data(clean, ["folder"])[0][2].endswith(", no non-image files; images that fail to decode are "
                                                        "skipped at run time")


def test_an_image_beside_the_class_folders_is_an_error(tmp_path):
    tree = make_tree(tmp_path / "tree", ["cat", "dog"])
    write_image(tree / "preview.jpg")
    assert "1 image(s) beside the class folders, in no class: preview.jpg; move them into their class folder" \
        in one_line_error(tree, "folder")


def test_a_class_of_non_images_only_is_empty(tmp_path):
    tree = make_tree(tmp_path / "tree", ["cat"])
    (tree / "dog").mkdir()
    (tree / "dog" / "img.jpg").write_text("not a picture")
    assert "1 empty class folder(s), without any image: dog" in one_line_error(tree, "folder")


@pytest.mark.parametrize("target", ["..", "../.."])
def test_a_symlink_loop_is_one_error_naming_the_link(tmp_path, target):
    tree = make_tree(tmp_path / "tree", ["cat", "dog"])
    (tree / "cat" / "sub").mkdir()
    os.symlink(target, tree / "cat" / "sub" / "loop")
    message = one_line_error(tree, "folder")
    assert message.startswith(f"{tree / 'cat' / 'sub' / 'loop'}: a symlink loop, it leads back to ")
    assert message.endswith("which contains it; remove or fix the link")


def test_links_are_followed_and_a_broken_one_is_skipped(tmp_path):
    tree = make_tree(tmp_path / "tree", ["cat", "dog"])
    make_tree(tmp_path / "elsewhere", ["more"], per_class=2)
    os.symlink(tmp_path / "elsewhere" / "more", tree / "cat" / "more")
    os.symlink(tmp_path / "nowhere.jpg", tree / "dog" / "gone.jpg")
    ds = open_dataset(tree, "folder")
    assert [label for _, label in ds.samples] == [0, 0, 0, 1] and ds.skipped_files == [tree / "dog" / "gone.jpg"]


def test_csv_problems_are_one_line(tmp_path):
    make_tree(tmp_path / "mine", ["cat", "dog"])
    assert one_line_error(tmp_path / "mine", "csv") == \
        f"{tmp_path / 'mine'}: csv expects a CSV file of path,label rows, got a directory"
    assert "PROBLEM: " in check_data(tmp_path / "mine", ["csv"])[0][2]
    for text, words in [("path,label\nmine/cat/img_0.jpg\n", "1 row(s) without a path or a label, on line(s) 2"),
                        ("path,label\n", "no rows below the path,label header"),
                        ("file,class\nmine/cat/img_0.jpg,cat\n", "expected a header with columns path,label"),
                        ("path,label\nmine/cat/img_0.jpg,cat\n", "only one class ('cat')")]:
        (tmp_path / "list.csv").write_text(text)
        assert words in one_line_error(tmp_path / "list.csv", "csv")
    (tmp_path / "list.csv").write_bytes(b"path,label\n\xff\xfe,cat\n")
    assert "not a UTF-8 CSV" in one_line_error(tmp_path / "list.csv", "csv")


def test_csv_rows_of_non_images_are_skipped_unless_strict(tmp_path):
    make_tree(tmp_path / "mine", ["cat", "dog"])
    (tmp_path / "mine" / "notes.txt").write_text("x")
    (tmp_path / "list.csv").write_text("path,label\nmine/cat/img_0.jpg,cat\nmine/notes.txt,dog\n"
                                       "mine/dog/img_0.jpg,dog\n")
    ds = open_dataset(tmp_path / "list.csv", "csv")
    assert [p.name for p, _ in ds.samples] == ["img_0.jpg", "img_0.jpg"] and len(ds.skipped_files) == 1
    assert ds.skipped_files[0].name == "notes.txt" and ds.mapping_preview() == "classes: cat, dog (2)"
    assert "drop --strict" in one_line_error(tmp_path / "list.csv", "csv", strict=True)
    (tmp_path / "numbers.csv").write_text("path,label\nmine/cat/img_0.jpg,1\nmine/dog/img_0.jpg,0\n")
    (tmp_path / "classnames.txt").write_text("dog\ncat\n")
    assert open_dataset(tmp_path / "numbers.csv", "csv").mapping_preview() == "classes: 0 -> dog, 1 -> cat (2)"


def test_fault_injection_tree(tmp_path):
    """Every odd file a real tree holds: only non-images are skipped up front, only unreadable images fail."""
    tree = tmp_path / "tree"
    write_image(tree / "cat" / "good.jpg")
    (tree / "cat" / "zero.jpg").write_bytes(b"")
    cut = noise_jpeg(tree / "cat" / "truncated.jpg")
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    Image.new("RGB", (5, 4), (9, 200, 9)).save(tree / "cat" / "png_named.jpg", "PNG")
    (tree / "cat" / "text.jpg").write_text("not a picture\n")
    Image.new("RGB", (1, 1), (1, 2, 3)).save(tree / "cat" / "one_pixel.png")
    (tree / "cat" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + bytes(60))
    (tree / "dog").mkdir()
    write_png(tree / "dog" / "gray16.png", 3, 1, 16, 0, np.array([[0, 32896, 65535]], dtype=np.uint16))
    Image.new("CMYK", (6, 6), (0, 255, 255, 0)).save(tree / "dog" / "cmyk.jpg")
    first, second = Image.new("P", (4, 4), 1), Image.new("P", (4, 4), 2)
    first.putpalette([0, 0, 0, 250, 0, 0, 0, 0, 250])
    first.save(tree / "dog" / "anim.gif", save_all=True, append_images=[second])
    write_png(tree / "dog" / "bomb.png", 20_000, 20_000, 1, 0)  # 4e8 pixels claimed by a 60-byte header
    write_image(tree / "dog" / "nested" / "deep.jpg")

    ds = open_dataset(tree, "folder")
    assert sorted(p.name for p in ds.skipped_files) == ["Thumbs.db", "text.jpg", "zero.jpg"]
    assert len(ds) == 9 and ds.classnames == ["cat", "dog"]
    failures, loaded = [], {}
    for index in range(len(ds)):
        try:
            image, _, path = ds[index]
        except DecodeError as e:
            failures.append(os.path.basename(e.path))
        else:
            assert image.mode == "RGB"
            loaded[os.path.basename(path)] = np.asarray(image)
    assert sorted(failures) == ["bomb.png", "truncated.jpg"]
    assert loaded["png_named.jpg"][0, 0].tolist() == [9, 200, 9] and loaded["one_pixel.png"].shape == (1, 1, 3)
    assert loaded["gray16.png"][0, :, 0].tolist() == [0, 128, 255]
    assert loaded["anim.gif"].shape == (4, 4, 3) and loaded["anim.gif"][0, 0].tolist() == [250, 0, 0]  # frame 0
    assert loaded["cmyk.jpg"].shape == (6, 6, 3)
    skips = [item.skip_reason for item in stream_images(ds, workers=0) if item.skip_reason]
    assert len(skips) == 2 and any("image too large" in reason for reason in skips)
