"""One sentence for what a restore carried: a folder restore and an archive count the
same things and word them alike, from the result or from its JSON form (a finished
job's result read back, an API response)."""

from __future__ import annotations

from engine.services.restore_archive import ArchiveResult, archived_summary
from engine.services.restore_extract import summary
from engine.services.restore_views import ExtractResult
from engine.shapes import extract_result_dict


def test_a_folder_restore_and_an_archive_word_the_same_counts_alike() -> None:
    counts = {"files": 3, "directories": 1, "symlinks": 2, "hardlinks": 1, "specials": 0}
    extracted = ExtractResult(destination="/srv/r", bytes=12 * 1024, **counts)
    archived = ArchiveResult(format="tar", output="/srv/o.tar", bytes=12 * 1024, **counts)

    assert summary(extracted) == "restored 3 files, 1 folder, 2 links, 1 hard link, 12.0 KiB"
    assert archived_summary(archived) == (
        "archived 3 files, 1 folder, 2 links, 1 hard link, 12.0 KiB as tar into /srv/o.tar"
    )
    # the same words from the JSON a job records and the CLI/API read back
    assert summary(extract_result_dict(extracted.as_dict())) == summary(extracted)
    assert archived_summary(archived.as_dict()) == archived_summary(archived)


def test_special_files_are_named_only_when_there_are_some() -> None:
    plain = ExtractResult(destination="/srv/r", files=1)
    with_specials = ExtractResult(destination="/srv/r", files=1, specials=2)

    assert "special" not in summary(plain) and "hard link" not in summary(plain)
    assert "2 special files" in summary(with_specials)


def test_a_result_recorded_before_the_newer_counts_reads_them_as_zero() -> None:
    older = {"destination": "/srv/r", "files": 4, "directories": 2, "bytes": 100}

    shown = extract_result_dict(older, job_id=7)

    assert shown["hardlinks"] == 0 and shown["specials"] == 0
    assert summary(shown) == "restored 4 files, 2 folders, 0 links, 100 B"


def test_an_archive_with_items_left_out_says_how_many() -> None:
    result = ArchiveResult(format="zip", output="-", files=1, skipped=[("p1/s", "a socket")])

    assert result.sentence().endswith("; 1 not archived")
