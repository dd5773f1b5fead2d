"""ImageFolder-style folders (root/<class>/*.png|jpg) decoded with Pillow: class order, pixel
values against the written images, resizing, a test folder, and the errors."""
import numpy as np
import pytest

from fedopt.config import validate
from fedopt.data import build_dataset
from fedopt.schema import ConfigError

Image = pytest.importorskip("PIL.Image")

COLOURS = {"cat": (255, 0, 0), "dog": (0, 128, 255), "ant": (10, 200, 30)}


def write_folder(root, per_class=4, size=(6, 5), ext=".png"):
    """Solid-colour images of each class (any resize of a solid image keeps its colour)."""
    for c, rgb in COLOURS.items():
        sub = root / c / "nested" if c == "dog" else root / c     # images found recursively
        sub.mkdir(parents=True)
        for j in range(per_class):
            a = np.zeros((size[1], size[0], 3), np.uint8) + np.array(rgb, np.uint8)
            Image.fromarray(a).save(sub / f"{j}{ext if j else ext.upper()}")
    (root / ".hidden").mkdir()
    (root / "cat" / "notes.txt").write_text("not an image")


def test_classes_sorted_pixels_scaled_and_every_image_once(tmp_path):
    write_folder(tmp_path)
    d = build_dataset({"name": "image_folder", "path": str(tmp_path), "num_clients": 3,
                       "image_size": [4, 4], "test_fraction": 0.25}, seed=0)
    assert d.num_classes == 3 and d.feature_shape == (3, 4, 4)
    assert d.x.shape[0] + d.x_test.shape[0] == 12            # notes.txt is not an image
    x = np.concatenate([d.x.numpy(), d.x_test.numpy()])
    y = np.concatenate([d.y.numpy(), d.y_test.numpy()])
    for label, name in enumerate(sorted(COLOURS)):           # ant=0, cat=1, dog=2
        rows = x[y == label]
        assert rows.shape[0] == 4
        want = np.array(COLOURS[name], np.float32)[:, None, None] / 255
        np.testing.assert_allclose(rows, np.broadcast_to(want, rows.shape), atol=1e-6)


def test_grayscale_jpeg_and_test_folder(tmp_path):
    write_folder(tmp_path / "train", ext=".jpg")
    (tmp_path / "test" / "dog").mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(tmp_path / "test" / "dog" / "a.png")
    d = build_dataset({"name": "image_folder", "path": str(tmp_path / "train"),
                       "test_path": str(tmp_path / "test"), "grayscale": True,
                       "image_size": [3, 5], "num_clients": 2}, seed=0)
    assert d.feature_shape == (1, 3, 5) and d.x.shape[0] == 12
    assert d.y_test.tolist() == [2]                           # dog keeps the train index
    np.testing.assert_allclose(d.x_test.numpy(), 200 / 255, atol=1e-6)
    cat = d.x[d.y == 1].numpy()     # Pillow's L = (299 R + 587 G + 114 B) / 1000; JPEG is lossy
    np.testing.assert_allclose(cat, 0.299 * 255 / 255, atol=0.03)


def test_validate_lists_without_decoding_and_checks_rows(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "cat" / "9.png").write_bytes(b"not decoded by validate")
    cfg = {"data": {"name": "image_folder", "path": str(tmp_path), "num_clients": 4,
                    "image_size": [8, 8]},
           "model": {"name": "cnn", "channels": [4], "hidden": 8},
           "algorithm": {"name": "fedavg", "rounds": 1, "clients_per_round": 2},
           "client": {"local_steps": 1, "batch_size": 2, "optimizer": {"name": "sgd", "lr": 0.1}}}
    assert validate(cfg)["data"]["image_size"] == [8, 8]
    cfg["data"]["num_clients"] = 20
    with pytest.raises(ConfigError, match=r"data.num_clients: cannot give 20 clients .* 13 rows"):
        validate(cfg)
    with pytest.raises(ConfigError, match=r"data.path: .*9.png is not an image Pillow can "
                                          r"decode"):
        build_dataset({**cfg["data"], "num_clients": 2}, 0)


@pytest.mark.parametrize("make,field,match", [
    (lambda r: None, "data.path", r"no such folder: .*one subfolder of images"),
    (lambda r: r.mkdir(), "data.path", r"has no class subfolders"),
    (lambda r: (r / "a").mkdir(parents=True), "data.path", r"class folder .*a holds no image"),
    (lambda r: r.write_text("x"), "data.path", r"is not a folder"),
])
def test_folder_errors_name_the_field(tmp_path, make, field, match):
    root = tmp_path / "imgs"
    make(root)
    with pytest.raises(ConfigError, match=field + ": .*" + match):
        build_dataset({"name": "image_folder", "path": str(root), "num_clients": 1}, 0)


def test_test_folder_with_an_unknown_class(tmp_path):
    write_folder(tmp_path / "train")
    (tmp_path / "test" / "cow").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "test" / "cow" / "a.png")
    with pytest.raises(ConfigError, match=r"data.test_path: class folder 'cow' is not a class "
                                          r"of data.path \(ant, cat, dog\)"):
        build_dataset({"name": "image_folder", "path": str(tmp_path / "train"),
                       "test_path": str(tmp_path / "test"), "num_clients": 2}, 0)


def test_image_size_is_checked_by_the_schema(tmp_path):
    with pytest.raises(ConfigError, match=r"data.image_size"):
        build_dataset({"name": "image_folder", "path": str(tmp_path), "image_size": [0, 4]}, 0)


def test_decoding_is_refused_when_the_rows_cannot_fit(tmp_path, monkeypatch):
    write_folder(tmp_path)
    need = 3 * 12 * 3 * 100 * 100 * 4                      # 12 images of [3, 100, 100] float32
    monkeypatch.setattr("fedopt.data.files.available_memory_bytes", lambda d: need - 1)
    with pytest.raises(ConfigError, match=r"data.path: decoding 12 images of shape \[3, 100, "
                                          r"100\] needs about"):
        build_dataset({"name": "image_folder", "path": str(tmp_path), "num_clients": 2,
                       "image_size": [100, 100]}, 0)
    monkeypatch.setattr("fedopt.data.files.available_memory_bytes", lambda d: need)
    assert build_dataset({"name": "image_folder", "path": str(tmp_path), "num_clients": 2,
                          "image_size": [100, 100]}, 0).feature_shape == (3, 100, 100)


def test_a_run_on_an_image_folder(tmp_path):
    import fedopt

    write_folder(tmp_path)
    cfg = {"seed": 0, "data": {"name": "image_folder", "path": str(tmp_path), "num_clients": 3,
                               "image_size": [8, 8], "test_fraction": 0.25},
           "model": {"name": "cnn", "channels": [4], "hidden": 8},
           "algorithm": {"name": "fedavg", "rounds": 2, "clients_per_round": 3},
           "client": {"local_steps": 2, "batch_size": 2, "optimizer": {"name": "sgd", "lr": 0.1}},
           "eval_every": 1}
    r = fedopt.run(cfg, progress=False)
    assert [m["round"] for m in r.metrics] == [1, 2]
    assert r.summary["dataset"]["feature_shape"] == [3, 8, 8]


def test_a_symlink_loop_lists_each_image_once(tmp_path):
    """Links are followed (as ImageFolder does), but a folder reached again through a link is
    not walked again: a link to its own parent would otherwise repeat every image once per
    level until the path is too long, and two such links are 2^depth copies."""
    from fedopt.data.image_folder import list_images

    write_folder(tmp_path)
    (tmp_path / "cat" / "again").symlink_to(tmp_path / "cat", target_is_directory=True)
    (tmp_path / "dog" / "outside").symlink_to(tmp_path / "ant", target_is_directory=True)
    listing = list_images(tmp_path)
    assert np.bincount(listing.labels).tolist() == [4, 4, 8]    # dog also holds ant's 4
