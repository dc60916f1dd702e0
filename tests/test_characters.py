"""The Characters protocol, run against every implementation (SQLite today)."""

from __future__ import annotations

import pytest

from daguerre.errors import RequestError
from daguerre.jobs.characters import Character, CharacterStore


@pytest.fixture(params=["sqlite"])
def store(request, tmp_path):
    s = CharacterStore(tmp_path / "jobs.sqlite3")
    yield s
    s.close()


def test_round_trip_replace_and_delete(store):
    saved = store.put("k1", Character("anna", "  30-year-old woman, olive skin ", 42, b"png-bytes"))
    assert saved.anchor == "30-year-old woman, olive skin" and saved.created_at > 0
    got = store.get("k1", "anna")
    assert (got.anchor, got.seed, got.reference_image) == (saved.anchor, 42, b"png-bytes")
    store.put("k1", Character("anna", "30-year-old woman, olive skin, short hair", 43))
    assert store.get("k1", "anna").seed == 43 and [c.name for c in store.list("k1")] == ["anna"]
    assert store.delete("k1", "anna") and not store.delete("k1", "anna")
    with pytest.raises(RequestError) as e:
        store.get("k1", "anna")
    assert e.value.parameter == "character"


def test_owners_are_isolated(store):
    store.put("k1", Character("anna", "anchor one", 1))
    store.put("k2", Character("anna", "anchor two", 2))
    assert store.get("k1", "anna").seed == 1 and store.get("k2", "anna").seed == 2
    assert [c.anchor for c in store.list("k2")] == ["anchor two"] and store.list("k3") == []


@pytest.mark.parametrize(
    ("character", "parameter"),
    [
        (Character("bad name", "anchor", 1), "character"),
        (Character("-x", "anchor", 1), "character"),
        (Character("anna", "a", 1), "anchor"),
        (Character("anna", "anchor", -1), "seed"),
        (Character("anna", "anchor", 2**63), "seed"),
    ],
)
def test_invalid_characters_name_the_field(store, character, parameter):
    with pytest.raises(RequestError) as e:
        store.put("k1", character)
    assert e.value.parameter == parameter


def test_anchor_is_prepended_once():
    c = Character("anna", "30-year-old woman", 1)
    assert c.apply(" at a cafe ") == "30-year-old woman, at a cafe"
    assert c.apply("30-year-old woman, at a cafe") == "30-year-old woman, at a cafe"
