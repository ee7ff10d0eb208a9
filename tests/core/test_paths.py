"""Path confinement (musar/paths.py): symlinks and '..' are resolved before the check, relative
paths are tried against each allowed folder, and a refusal looks the same whether or not the
path exists."""

import os

import pytest

from musar.paths import folder_file, folder_files, is_inside, resolve_inside


@pytest.fixture
def tree(tmp_path):
    allowed, other, secret = tmp_path / "allowed", tmp_path / "second", tmp_path / "secret"
    for d in (allowed / "data", other, secret):
        d.mkdir(parents=True)
    (allowed / "data" / "a.parquet").write_text("x")
    (other / "b.parquet").write_text("x")
    (secret / "key.txt").write_text("x")
    (allowed / "out_link").symlink_to(secret, target_is_directory=True)
    (allowed / "in_link").symlink_to(allowed / "data", target_is_directory=True)
    return tmp_path, [allowed, other]


def test_paths_inside_the_allowed_folders_resolve_to_their_real_location(tree):
    root, roots = tree
    allowed = os.path.realpath(roots[0])
    assert resolve_inside("data/a.parquet", roots) == os.path.join(allowed, "data", "a.parquet")
    assert resolve_inside("b.parquet", roots) == os.path.realpath(roots[1] / "b.parquet")
    assert resolve_inside("in_link/a.parquet", roots) == os.path.join(allowed, "data", "a.parquet")
    assert resolve_inside(str(roots[0] / "data" / ".." / "data"), roots) == os.path.join(allowed, "data")
    assert resolve_inside("data/missing", roots) == os.path.join(allowed, "data", "missing")


@pytest.mark.parametrize("path", ["../secret/key.txt", "out_link/key.txt", "{root}/secret/key.txt",
                                  "data/../../secret", "../secret/nothing_here", "{root}/nowhere",
                                  "/etc/passwd", "", "   ", "data\x00/a.parquet", None, 5])
def test_paths_leaving_the_allowed_folders_are_refused(tree, path):
    root, roots = tree
    if isinstance(path, str):
        path = path.replace("{root}", str(root))
    assert resolve_inside(path, roots[:1]) is None
    found = resolve_inside(path, roots)  # with two folders: at most a missing file in the second
    assert found is None or (is_inside(found, roots[1]) and not os.path.exists(found))


def test_tilde_is_not_expanded(tree):
    root, roots = tree
    assert resolve_inside("~/.ssh", roots[:1]) == os.path.join(os.path.realpath(roots[0]), "~", ".ssh")


def test_is_inside_compares_resolved_paths(tree):
    root, roots = tree
    assert is_inside(roots[0] / "in_link", roots[0])
    assert not is_inside(roots[0] / "out_link", roots[0])
    assert not is_inside(root / "allowed_sibling", roots[0])  # a common prefix is not a parent


@pytest.fixture
def weights(tmp_path):
    """A folder of files a combo picks from: two good ones, one of another kind, a sub-folder,
    a link to another file of the folder and a link out of it."""
    folder, outside = tmp_path / "weights", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    for name in ("toy_flux.safetensors", "toy_flux_b.safetensors", "notes.txt"):
        (folder / name).write_text("x")
    (folder / "toy_flux_dir.safetensors").mkdir()
    (outside / "toy_flux_secret.safetensors").write_text("x")
    (folder / "toy_flux_out.safetensors").symlink_to(outside / "toy_flux_secret.safetensors")
    (folder / "toy_flux_alias.safetensors").symlink_to(folder / "toy_flux.safetensors")
    return folder


def test_a_file_combo_lists_only_matching_files_that_stay_in_the_folder(weights):
    assert folder_files(weights, ["toy_flux*.safetensors"]) == [
        "toy_flux.safetensors", "toy_flux_alias.safetensors", "toy_flux_b.safetensors"]
    assert folder_files(weights, ["*.TXT"]) == ["notes.txt"]  # patterns ignore case
    assert folder_files(weights / "missing", ["*"]) == [] and folder_files(None, ["*"]) == []


@pytest.mark.parametrize("name", ["toy_flux_out.safetensors", "toy_flux_dir.safetensors", "notes.txt",
                                  "../outside/toy_flux_secret.safetensors", "TOY_FLUX.safetensors",
                                  "./toy_flux.safetensors", "", None, 3, "toy_flux.safetensors\x00"])
def test_a_file_combo_refuses_every_value_it_does_not_list(weights, name):
    assert folder_file(weights, name, ["toy_flux*.safetensors"]) is None


def test_a_listed_name_gives_its_real_path(weights):
    real = os.path.realpath(weights / "toy_flux.safetensors")
    assert folder_file(weights, "toy_flux.safetensors", ["toy_flux*.safetensors"]) == real
    assert folder_file(weights, "toy_flux_alias.safetensors", ["toy_flux*.safetensors"]) == real
