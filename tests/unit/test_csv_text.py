"""A study's CSV files are formatted row by row as they grow (``CsvText``), and read the same as a
whole rendering: a new column, or a list whose earlier rows were replaced, formats every row again."""

from __future__ import annotations

import csv
import io

from flsuite.coordinator.outputs import CsvText, _csv


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_a_growing_file_is_formatted_once_per_row_and_reads_as_a_whole_rendering(monkeypatch) -> None:
    import flsuite.coordinator.outputs as outputs

    formatted = [0]
    real = outputs._csv

    def counting(rows, columns, *, header=True):  # noqa: ANN001, ANN202 - outputs._csv, counted
        formatted[0] += len(rows)
        return real(rows, columns, header=header)

    monkeypatch.setattr(outputs, "_csv", counting)
    text, rows, columns = CsvText(), [], ["round", "site", "epsilon"]
    for number in range(1, 41):
        rows.extend({"round": number, "site": f"site-{i}", "epsilon": 0.1 * number + i} for i in range(3))
        rendered = text.of(rows, columns)
        assert rendered == real(rows, columns)
    assert formatted[0] == 120  # each row once; 2,460 when the whole file was formatted every round


def test_a_new_column_or_replaced_rows_format_every_row_again() -> None:
    text = CsvText()
    rows = [{"round": 1, "site": "a", "loss": 0.5}]
    text.of(rows, ["round", "site", "loss"])
    rows.append({"round": 2, "site": "a", "loss": 0.4, "auc": 0.9})  # a metric first seen in round 2
    widened = text.of(rows, ["round", "site", "auc", "loss"])
    assert widened == _csv(rows, ["round", "site", "auc", "loss"])
    assert _rows(widened)[0] == {"round": "1", "site": "a", "auc": "", "loss": "0.5"}
    rows[0] = {"round": 1, "site": "a", "loss": 0.7, "auc": 0.8}  # an earlier row replaced (a resumed study's)
    assert text.of(rows, ["round", "site", "auc", "loss"]) == _csv(rows, ["round", "site", "auc", "loss"])
    assert text.of(rows[:1], ["round", "site", "auc", "loss"]) == _csv(rows[:1], ["round", "site", "auc", "loss"])
