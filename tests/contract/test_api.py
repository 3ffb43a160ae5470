"""The names, defaults and argument checks that every tier shares."""

from __future__ import annotations

import pytest

from tests.support import ALL_OPTIONS, OPTIONS, Recorder, Tier

CONTRACT_NAMES = {"Job", "JobQueue", "Priority", "QueueClosed", "QueueFull"}


def test_the_package_exports_the_contract_names(tier: Tier) -> None:
    assert set(tier.module.__all__) >= CONTRACT_NAMES
    for name in tier.module.__all__:
        assert hasattr(tier.module, name), name


def test_priority_has_high_medium_and_low(tier: Tier) -> None:
    assert [p.name for p in tier.Priority] == ["HIGH", "MEDIUM", "LOW"]
    assert tier.Priority.HIGH > tier.Priority.MEDIUM > tier.Priority.LOW


def test_a_job_gets_a_fresh_hex_id_an_empty_payload_and_medium_priority(tier: Tier) -> None:
    a, b = tier.Job(), tier.Job()
    assert a.id != b.id
    assert len(a.id) == 32 and int(a.id, 16) >= 0
    assert a.payload == b""
    assert a.priority is tier.Priority.MEDIUM


@pytest.mark.parametrize("workers", [0, -1])
def test_fewer_than_one_worker_is_a_value_error(tier: Tier, workers: int) -> None:
    with pytest.raises(ValueError, match="workers"):
        tier.module.JobQueue(Recorder(), workers=workers)


def test_an_option_the_tier_lacks_is_a_type_error(tier: Tier) -> None:
    for option in sorted(ALL_OPTIONS - OPTIONS[tier.name]):
        with pytest.raises(TypeError, match=option):
            tier.module.JobQueue(Recorder(), **{option: 1})


def test_the_handler_must_be_callable(tier: Tier) -> None:
    with pytest.raises(TypeError, match="handler"):
        tier.module.JobQueue("not a function")


def test_enqueue_refuses_what_is_not_a_job_with_a_priority(tier: Tier) -> None:
    q = tier.queue(Recorder())
    with pytest.raises(TypeError, match="Job"):
        q.enqueue({"payload": b"x"})
    with pytest.raises(TypeError, match="priority"):
        q.enqueue(tier.Job(priority=1))
