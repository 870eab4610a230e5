"""VOC reader: XML parsing, coordinates, the folder layout, errors."""

import warnings

import numpy as np
import pytest
import torch

from detkit.data.voc import VOC_CLASSES, VOCDataset, infer_year, parse_voc_xml
from detkit.errors import UserError
from tests.conftest import annotation_xml, make_voc, obj_xml


@pytest.fixture
def voc_root(tmp_path):
    return make_voc(
        tmp_path / "VOCdevkit" / "VOC2007",
        {
            "000001": (40, 60, [obj_xml("dog", (1, 2, 30, 20)), obj_xml("person", (5, 5, 50, 38), difficult=1)]),
            "000002": (50, 30, [obj_xml("cat", (3, 4, 20, 45), truncated=1)]),
            "000003": (32, 32, []),
        },
    )


def test_parse_xml_flags_and_continuous_coordinates(tmp_path):
    path = tmp_path / "x.xml"
    path.write_text(
        annotation_xml(
            "x", 100, 200, [obj_xml("dog", (1, 2, 10, 20), truncated=1), obj_xml("tvmonitor", (48, 240, 195, 371), 1)]
        )
    )
    a = parse_voc_xml(path)
    assert a["size"] == (100, 200)
    np.testing.assert_array_equal(a["boxes"], [[0, 1, 10, 20], [47, 239, 195, 371]])
    assert a["boxes"].dtype == np.float32
    np.testing.assert_array_equal(a["labels"], [VOC_CLASSES.index("dog"), 19])
    np.testing.assert_array_equal(a["difficult"], [False, True])
    np.testing.assert_array_equal(a["truncated"], [True, False])


def test_voc_classes_standard_order():
    assert len(VOC_CLASSES) == 20 and VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[-1] == "tvmonitor"
    assert VOC_CLASSES.index("person") == 14


def test_malformed_xml_names_the_file(tmp_path):
    path = tmp_path / "broken_000042.xml"
    path.write_text("<annotation><object><name>dog</name>")
    with pytest.raises(UserError, match="broken_000042.xml"):
        parse_voc_xml(path)
    path.write_text(annotation_xml("x", 10, 10, ["<object><name>dog</name></object>"]))
    with pytest.raises(UserError, match="broken_000042.xml.*bndbox"):
        parse_voc_xml(path)
    path.write_text(annotation_xml("x", 10, 10, [obj_xml("unicorn", (1, 1, 5, 5))]))
    with pytest.raises(UserError, match="unicorn"):
        parse_voc_xml(path)


def test_tiny_voc_folder_loads(voc_root):
    ds = VOCDataset(root=str(voc_root), split="test")
    assert len(ds) == 3 and ds.image_ids == ["000001", "000002", "000003"]
    assert ds.year == 2007 and ds.category_ids == list(range(1, 21)) and ds.class_names == list(VOC_CLASSES)
    assert ds.image_sizes == [(40, 60), (50, 30), (32, 32)]

    image, target = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 40, 60)
    # the difficult person is dropped from training targets by default
    torch.testing.assert_close(target["boxes"], torch.tensor([[0.0, 1.0, 30.0, 20.0]]))
    assert target["labels"].tolist() == [VOC_CLASSES.index("dog")] and target["labels"].dtype == torch.int64
    assert set(target) == {"boxes", "labels", "image_id", "orig_size", "file_name"}  # flags are the evaluator's
    assert target["image_id"] == "000001" and target["orig_size"] == (40, 60)
    assert target["file_name"].endswith("000001.jpg")

    _, t2 = ds[1]
    assert t2["labels"].tolist() == [VOC_CLASSES.index("cat")]  # truncated objects are trained on
    _, t3 = ds[2]
    assert t3["boxes"].shape == (0, 4) and t3["labels"].shape == (0,)

    # the evaluator sees every object, by index or by image id, without reading the image
    a = ds.annotations("000001")
    assert a["image_id"] == "000001" and a["difficult"].tolist() == [False, True]
    np.testing.assert_array_equal(a["boxes"], ds.annotations(0)["boxes"])
    np.testing.assert_array_equal(a["boxes"][1], [4, 4, 50, 38])


def test_keep_difficult_and_transform(voc_root):
    def hflip(image, boxes, labels):
        w = image.shape[1]
        boxes = boxes.copy()
        boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
        return image[:, ::-1], boxes, labels

    ds = VOCDataset(root=str(voc_root), split="test", keep_difficult=True, transform=hflip)
    image, target = ds[0]
    assert image.shape == (3, 40, 60) and image.dtype == torch.uint8
    torch.testing.assert_close(target["boxes"], torch.tensor([[30.0, 1.0, 60.0, 20.0], [10.0, 4.0, 56.0, 38.0]]))
    assert target["labels"].tolist() == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")]
    plain = VOCDataset(root=str(voc_root), split="test")[0][0]
    torch.testing.assert_close(image, plain.flip(-1))


def test_missing_paths_raise_user_error(voc_root, tmp_path):
    with pytest.raises(UserError, match="nowhere"):
        VOCDataset(root=str(tmp_path / "nowhere"), split="test")
    with pytest.raises(UserError, match="trainval.txt"):
        VOCDataset(root=str(voc_root), split="trainval")
    (voc_root / "Annotations" / "000002.xml").write_text("<annotation>")
    with pytest.raises(UserError, match="000002.xml"):
        VOCDataset(root=str(voc_root), split="test")


def test_unreadable_image_warns_and_returns_none(voc_root):
    (voc_root / "JPEGImages" / "000002.jpg").write_bytes(b"not a jpeg")
    ds = VOCDataset(root=str(voc_root), split="test")
    with pytest.warns(UserWarning, match="000002.jpg"):
        assert ds[1] is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ds[0] is not None


def test_infer_year(tmp_path):
    assert infer_year(tmp_path / "VOC2012") == 2012
    assert infer_year(tmp_path / "VOC2007_test") == 2007
    assert infer_year(tmp_path / "mydata") is None


def test_dataset_feeds_the_voc_evaluator(voc_root):
    from detkit.evaluation.voc import VOCEvaluator

    ds = VOCDataset(root=str(voc_root), split="test")
    evaluator = VOCEvaluator(dataset_annotations=ds.annotations, class_names=ds.class_names)
    assert evaluator.use_11_point is True  # VOC2007, read from the dataset
    targets = [ds[i][1] for i in range(len(ds))]
    outputs = [{"boxes": t["boxes"], "scores": torch.ones(len(t["labels"])), "labels": t["labels"]} for t in targets]
    evaluator.process(targets, outputs)
    metrics = evaluator.evaluate()
    # dog and cat found exactly; person is difficult only -> absent
    assert metrics["AP50"] == 100.0 and metrics["AP"] == 100.0
    assert metrics["per_class"]["person"] is None and metrics["per_class"]["dog"] == 100.0
