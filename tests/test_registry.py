"""Registry and cards: names, aliases, did-you-mean, lazy builders, argument checks."""

from __future__ import annotations

import pytest

from evfbench.cards import registry_root
from evfbench.errors import EvfbenchError
from evfbench.models.reference import Box
from evfbench.registry import (
    UnknownNameError,
    create_model,
    get_split,
    list_models,
    list_splits,
    model_args,
)


def test_split_names_and_aliases() -> None:
    for name in ("refcoco_testA", "refcoco_val", "refcoco+_testB", "refcocog_val", "refcocog_google_val",
                 "refclef_testC", "refcoco_google_test"):
        assert name in list_splits()
    assert get_split("refcocoplus_testB") is get_split("refcoco+_testB")
    assert get_split("refcoco_unc_testA") is get_split("refcoco_testA")
    umd = get_split("refcocog_val")
    assert (umd.dataset, umd.split_by, umd.split) == ("refcocog", "umd", "val")
    google = get_split("refcocog_google_val")
    assert (google.split_by, google.split) == ("google", "val")
    assert get_split("refcoco_testA").counts == {"refs": 1975, "sentences": 5657, "images": 750}


def test_unknown_split_suggests_close_names() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean.*'refcoco_testA'") as err:
        get_split("refcoco_testa")
    assert "python -m evfbench.ls splits" in str(err.value)


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'oracle'"):
        create_model("orcale")
    with pytest.raises(UnknownNameError, match="unknown weight tag"):
        create_model("box.nonexistent")


def test_reference_models_are_registered_and_built() -> None:
    assert {"oracle", "empty", "box", "all_objects", "largest", "predictions"} <= set(list_models())
    model = create_model("box", device="cpu", batch_size=4)
    assert isinstance(model, Box) and model.batch_size == 4


def test_wrong_builder_argument_is_explained() -> None:
    with pytest.raises(EvfbenchError, match="cannot take the arguments.*colour"):
        create_model("box", colour="red")


def test_registry_prefix_resolves_to_shipped_files(tmp_path, monkeypatch) -> None:
    from evfbench import cards
    from evfbench.cards import ModelCard, WeightTag

    card = ModelCard(name="fake", builder="evfbench.models.reference:Empty", description="",
                     tags={"t": WeightTag(name="t", args={"weights": "registry:weights/fake"})})
    monkeypatch.setattr(cards, "model_cards", lambda: {"fake": card})
    monkeypatch.setattr("evfbench.registry.model_cards", lambda: {"fake": card})
    assert model_args("fake.t")["weights"] == str(registry_root() / "weights/fake")
    assert model_args("fake.t", weights="/elsewhere")["weights"] == "/elsewhere"


def test_missing_backend_names_the_extra(monkeypatch) -> None:
    from evfbench.cards import ModelCard
    from evfbench.registry import MissingBackendError

    card = ModelCard(name="needs", builder="evfbench_no_such_backend.module:build", description="",
                     extras=("sam",))
    monkeypatch.setattr("evfbench.registry.model_cards", lambda: {"needs": card})
    with pytest.raises(MissingBackendError, match=r"pip install 'evfbench\[sam\]'"):
        create_model("needs")


def test_every_card_ships_in_the_wheel() -> None:
    """registry/ becomes evfbench/_registry in the wheel through package-data globs; a card
    that no glob matches would exist in a checkout but not in an installed package."""
    import fnmatch
    import tomllib

    pyproject = tomllib.loads((registry_root().parent / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["evfbench._registry"]
    assert pyproject["tool"]["setuptools"]["package-dir"]["evfbench._registry"] == "registry"
    for path in registry_root().rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            rel = path.relative_to(registry_root()).as_posix()
            depth_ok = [g for g in globs if fnmatch.fnmatch(rel, g) and g.count("/") == rel.count("/")]
            assert depth_ok, f"{rel} matches no package-data glob {globs}"
