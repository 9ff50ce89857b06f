"""Every layout of every set, built tiny in tmp; every wrong tree fails loudly before any image is read."""


import pytest

from mintclip.data import TestSet
from mintclip.data.catalog import DatasetError, check_data, open_dataset, resolve_set_id, set_label
from mintclip.data.imagenet import LAYOUTS, open_imagenet_train
from mintclip.data.templates import imagenet_assets
from tests.helpers import make_coop_set, make_tree, write_image


ASSETS = imagenet_assets()
WNIDS, NAMES = ASSETS["wnids"], ASSETS["classnames"]


def test_label_space_assets():
    assert len(NAMES) == 1000 and len(WNIDS) == 1000 and WNIDS == sorted(WNIDS)
    assert NAMES[657] == NAMES[744] == "missile" and NAMES[836] == NAMES[837] == "sunglasses"
    assert len(ASSETS["imagenet_a_wnids"]) == len(ASSETS["imagenet_r_wnids"]) == 200
    assert len(ASSETS["templates"]["openai_80"]) == 80 and len(ASSETS["templates"]["simple_7"]) == 7


def test_imagenet_a_maps_each_wnid_folder_to_its_class_name(tmp_path):
    a_wnids = ASSETS["imagenet_a_wnids"]
    make_tree(tmp_path / "imagenet-a", a_wnids)
    (tmp_path / "imagenet-a" / "README.txt").write_text("ImageNet-A")
    ds = open_dataset(tmp_path, "A")
    assert len(ds) == 200 and len(ds.classnames) == 200 and not TestSet.of(ds).augmix
    for path, label in ds.samples:
        wnid = path.parent.name
        assert label == a_wnids.index(wnid)
        assert ds.classnames[label] == NAMES[WNIDS.index(wnid)]
    image, label, path = ds[0]
    assert image.mode == "RGB" and label == 0 and path.endswith("img_0.jpg")
    assert ds.classnames[0] == "stingray"  # n01498041, ImageNet index 6


def test_imagenet_v2_folder_number_is_the_imagenet_index(tmp_path):
    make_tree(tmp_path / "imagenetv2-matched-frequency-format-val", [str(i) for i in range(1000)])
    ds = open_dataset(tmp_path, "V")
    by_folder = {path.parent.name: label for path, label in ds.samples}
    assert by_folder["10"] == 10 and by_folder["999"] == 999 and by_folder["100"] == 100
    assert ds.classnames == NAMES and ds.classnames[10] == "brambling"


def test_imagenet_r_is_200_way_and_sketch_1000_way(tmp_path):
    make_tree(tmp_path / "imagenet-rendition" / "imagenet-r", ASSETS["imagenet_r_wnids"])
    ds = open_dataset(tmp_path, "R")
    assert len(ds.classnames) == 200 and "TDA" in ds.layout and len(TestSet.of(ds).templates) == 80
    make_tree(tmp_path / "ImageNet-Sketch" / "sketch", WNIDS)
    sketch = open_dataset(tmp_path, "K")
    assert sketch.classnames == NAMES and len(sketch) == 1000


def test_imagenet_train_is_found_where_coop_keeps_it_beside_the_validation_set(tmp_path):
    make_tree(tmp_path / "imagenet" / "images" / "train", WNIDS, per_class=2)
    make_tree(tmp_path / "imagenet" / "images" / "val", WNIDS)
    train = open_imagenet_train(tmp_path)
    assert train.root == tmp_path / "imagenet" / "images" / "train" and "CoOp" in train.layout
    assert len(train) == 2000 and train.classnames == NAMES and train.samples[2][1] == 1
    assert open_dataset(tmp_path, "I").root == tmp_path / "imagenet" / "images" / "val"
    with pytest.raises(DatasetError, match="ImageNet train split"):
        open_imagenet_train(tmp_path / "imagenet" / "images" / "val" / WNIDS[0])


@pytest.mark.parametrize("relative", [relative for relative, _ in LAYOUTS["A"]] + ["."])
def test_every_reference_layout_of_imagenet_a_is_accepted(tmp_path, relative):
    make_tree(tmp_path / relative, ASSETS["imagenet_a_wnids"])
    assert len(open_dataset(tmp_path, "imagenet-a")) == 200


def test_a_root_one_level_off_is_an_error_that_says_where(tmp_path):
    make_tree(tmp_path / "datasets" / "imagenet-a", ASSETS["imagenet_a_wnids"])
    with pytest.raises(DatasetError, match=r"no ImageNet-A here.*class folders found at .*datasets/imagenet-a"):
        open_dataset(tmp_path, "A")
    nested = tmp_path / "nested"
    make_tree(nested / "imagenet-a" / "imagenet-a", ASSETS["imagenet_a_wnids"])
    with pytest.raises(DatasetError, match=r"found at .*imagenet-a/imagenet-a"):
        open_dataset(nested, "A")


def test_missing_unknown_and_empty_classes_and_stray_files(tmp_path):
    a_wnids = ASSETS["imagenet_a_wnids"]
    make_tree(tmp_path / "missing" / "imagenet-a", a_wnids[1:])
    with pytest.raises(DatasetError, match=f"1 of 200 class folders missing: {a_wnids[0]}"):
        open_dataset(tmp_path / "missing", "A")
    make_tree(tmp_path / "unknown" / "imagenet-a", a_wnids + ["n01440764"])  # tench is not in ImageNet-A
    with pytest.raises(DatasetError, match="not ImageNet-A class wnids: n01440764"):
        open_dataset(tmp_path / "unknown", "A")
    make_tree(tmp_path / "empty" / "imagenet-a", a_wnids[1:])
    (tmp_path / "empty" / "imagenet-a" / a_wnids[0]).mkdir()
    with pytest.raises(DatasetError, match="1 empty class folder"):
        open_dataset(tmp_path / "empty", "A")
    make_tree(tmp_path / "stray" / "imagenet-a", a_wnids)
    (tmp_path / "stray" / "imagenet-a" / "labels.csv").write_text("x")
    assert [p.name for p in open_dataset(tmp_path / "stray", "A").skipped_files] == ["labels.csv"]
    with pytest.raises(DatasetError, match="not images.*: labels.csv; remove them, or drop --strict"):
        open_dataset(tmp_path / "stray", "A", strict=True)
    make_tree(tmp_path / "inner" / "imagenet-a", a_wnids)
    (tmp_path / "inner" / "imagenet-a" / a_wnids[3] / "notes.txt").write_text("x")
    ds = open_dataset(tmp_path / "inner", "A")
    assert len(ds) == 200 and ds.skipped_files == [tmp_path / "inner" / "imagenet-a" / a_wnids[3] / "notes.txt"]
    assert ds.mapping_preview(1) == f"classes: {a_wnids[0]} -> stingray, ... (200)"


def test_cross_domain_set_in_coop_layout(tmp_path):
    make_coop_set(tmp_path / "eurosat", ["AnnualCrop", "Herbaceous_Vegetation", "SeaLake"], "EuroSAT", "2750")
    ds = open_dataset(tmp_path, "eurosat")
    assert ds.set_id == "EuroSAT" and TestSet.of(ds).augmix and len(ds) == 6
    assert ds.classnames == ["AnnualCrop", "Herbaceous Vegetation", "SeaLake"]
    assert TestSet.of(ds).templates == ["a centered satellite photo of {}."]
    assert [label for _, label in ds.samples] == [0, 0, 1, 1, 2, 2]


def test_cross_domain_set_in_tpt_layout_with_the_split_beside_the_data(tmp_path):
    make_coop_set(tmp_path / "DTD", ["banded", "zigzagged"], "DescribableTextures", "images",
                  split_dir=tmp_path / "data_splits")
    ds = open_dataset(tmp_path, "DTD")
    assert len(ds) == 4 and TestSet.of(ds).templates == ["{} texture."]


def test_split_naming_missing_images_is_an_error(tmp_path):
    test = make_coop_set(tmp_path / "oxford_pets", ["abyssinian", "beagle", "boxer"], "OxfordPets", "images")
    (tmp_path / "oxford_pets" / "images" / test[-1][0]).unlink()
    with pytest.raises(DatasetError, match=r"1 of 6 test images missing under .*oxford_pets/images: boxer/boxer_1"):
        open_dataset(tmp_path, "Pets")
    make_coop_set(tmp_path / "other" / "oxford_pets", ["abyssinian"], "OxfordPets", "elsewhere")
    with pytest.raises(DatasetError, match="its test images .* are not under"):
        open_dataset(tmp_path / "other", "Pets")


def test_aircraft_from_fgvc_files(tmp_path):
    folder = tmp_path / "fgvc_aircraft"
    folder.mkdir()
    (folder / "variants.txt").write_text("707-320\nA340-500\nF/A-18\n")
    (folder / "images_variant_test.txt").write_text("0000001 A340-500\n0000002 F/A-18\n0000003 707-320\n")
    for i in (1, 2, 3):
        write_image(folder / "images" / f"000000{i}.jpg")
    ds = open_dataset(tmp_path, "Aircraft")
    assert ds.classnames == ["707-320", "A340-500", "F/A-18"]
    assert [label for _, label in ds.samples] == [1, 2, 0] and TestSet.of(ds).augmix


def test_users_own_image_folder_and_csv(tmp_path):
    tree = make_tree(tmp_path / "mine", ["cat", "dog", "red_fox"], per_class=2)
    ds = open_dataset(tree, "folder")
    assert ds.classnames == ["cat", "dog", "red fox"] and len(ds) == 6
    (tree / "classnames.txt").write_text("cat a house cat\ndog a dog\nred_fox a red fox\n")
    assert open_dataset(tree, "folder").classnames == ["a house cat", "a dog", "a red fox"]
    (tmp_path / "list.csv").write_text("path,label\nmine/cat/img_0.jpg,1\nmine/dog/img_1.jpg,0\n")
    (tmp_path / "classnames.txt").write_text("dog\ncat\n")
    ds = open_dataset(tmp_path / "list.csv", "csv")
    assert ds.classnames == ["dog", "cat"] and [label for _, label in ds.samples] == [1, 0]
    (tmp_path / "bad.csv").write_text("path,label\nmine/cat/img_0.jpg,5\n")
    with pytest.raises(DatasetError, match="labels outside 0..1: 5"):
        open_dataset(tmp_path / "bad.csv", "csv")


def test_several_image_folders_under_one_root(tmp_path):
    make_tree(tmp_path / "sketch", ["cat", "dog"])
    make_tree(tmp_path / "cartoon", ["cat", "dog"], per_class=2)
    ds = open_dataset(tmp_path, "folder:cartoon")
    assert ds.set_id == "folder:cartoon" and set_label(ds.set_id) == "cartoon" and len(ds) == 4
    assert set_label("A") == "A"
    with pytest.raises(DatasetError, match="no such directory"):
        open_dataset(tmp_path, "folder:painting")
    with pytest.raises(DatasetError, match="names one sub-folder"):
        resolve_set_id("folder:../elsewhere")


def test_set_ids_in_every_reference_spelling():
    assert [resolve_set_id(s) for s in ("A", "imagenet-a", "flower102", "oxford_flowers", "eurosat", "fgvc", "sun397")] \
        == ["A", "A", "Flower102", "Flower102", "EuroSAT", "Aircraft", "SUN397"]
    with pytest.raises(DatasetError, match="unknown set id 'Q'"):
        resolve_set_id("Q")


def test_check_data_reports_each_set(tmp_path):
    make_tree(tmp_path / "imagenet-r", ASSETS["imagenet_r_wnids"])
    report = check_data(tmp_path, ["R", "A"])
    assert report[0][1] is not None and "R: 200 images, 200 classes" in report[0][2]
    assert report[1][1] is None and "A: PROBLEM: " in report[1][2]
