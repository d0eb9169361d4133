from pathlib import Path

from edge.spool import Spool


def test_frames_survive_reopening_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, max_age_s=3600)
    first = [
        spool.append(i, 0, bytes([i]) * 10, source="cam.mp4", source_index=i) for i in range(5)
    ]
    assert first == list(range(first[0], first[0] + 5))
    assert spool.ack(first[1]) and not spool.ack(first[1])
    spool.close()

    again = Spool(tmp_path, max_bytes=1 << 20, max_age_s=3600)
    assert [f.sequence for f in again.pending(None, 10)] == [first[0], *first[2:]]
    assert [f.sequence for f in again.pending(first[2], 10)] == first[3:]
    assert (again.frames, again.size_bytes) == (4, 40)
    assert again.next_sequence == first[-1] + 1
    assert again.resume_position("cam.mp4") == 4
    assert again.resume_position("other.mp4") is None


def test_fresh_spools_never_reuse_sequences(tmp_path: Path) -> None:
    a = Spool(tmp_path / "a", max_bytes=1 << 20, max_age_s=3600).append(0, 0, b"x")
    b = Spool(tmp_path / "b", max_bytes=1 << 20, max_age_s=3600).append(0, 0, b"x")
    assert b > a  # sequences start at the wall clock in µs


def test_size_and_age_bounds_drop_oldest_and_report(tmp_path: Path) -> None:
    drops: list[tuple[str, int]] = []
    spool = Spool(
        tmp_path, max_bytes=250, max_age_s=3600, on_drop=lambda r, n: drops.append((r, n))
    )
    seqs = [spool.append(0, 0, b"x" * 100) for _ in range(5)]
    assert [f.sequence for f in spool.pending(None, 10)] == seqs[-2:]
    assert spool.size_bytes <= 250
    assert sum(n for r, n in drops if r == "spool_full") == 3

    aged = Spool(
        tmp_path / "aged",
        max_bytes=1 << 20,
        max_age_s=0.0,
        on_drop=lambda r, n: drops.append((r, n)),
    )
    aged.append(0, 0, b"old")
    aged.append(0, 0, b"new")
    assert ("spool_age", 1) in drops
    assert aged.frames == 1


def test_reject_drops_and_counts(tmp_path: Path) -> None:
    drops: list[tuple[str, int]] = []
    spool = Spool(
        tmp_path, max_bytes=1 << 20, max_age_s=3600, on_drop=lambda r, n: drops.append((r, n))
    )
    seq = spool.append(0, 0, b"bad")
    assert spool.reject(seq, "malformed")
    assert drops == [("rejected", 1)] and spool.frames == 0
    assert spool.wait_empty(0.1)
