"""Bad input gets a DataError naming the file and, where meaningful, the line and field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recprune.data import load_dataset, load_dealrec_dir, load_raw_log, split_log
from recprune.errors import DataError

ITEMS_TSV = "item_id\traw_id\ttitle\n1\tA1\tAlpha\n2\tB2\tBeta\n3\tC3\t\n4\tD4\tDelta\n"


def _dealrec_dir(root: Path, train: str = "1 1 2 3\n2 2 4\n", valid: str = "1 4\n2\n",
                 test: str = "1\n2 1\n", items: str | None = ITEMS_TSV) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "sequential_train.txt").write_text(train)
    (root / "sequential_valid.txt").write_text(valid)
    (root / "sequential_test.txt").write_text(test)
    if items is not None:
        (root / "items.tsv").write_text(items)
    return root


def _raises(fn, *args, path: Path | str | None = None, line: int | None = None,
            field: str | None = None, match: str | None = None, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    err = info.value
    msg = str(err)
    if path is not None:
        assert str(path) in msg and err.path is not None and str(path) in err.path, msg
    if line is not None:
        assert err.line == line and f"line {line}" in msg, msg
    if field is not None:
        assert err.field == field and f"'{field}'" in msg, msg
    if match is not None:
        assert match in msg, msg
    return err


# ------------------------------------------------------------------------------------------
# DEALRec directory loader
# ------------------------------------------------------------------------------------------

def test_dealrec_tiny_dir_loads(tmp_path: Path) -> None:
    ds = load_dealrec_dir(_dealrec_dir(tmp_path / "d"))
    assert (ds.n_users, ds.n_items, ds.train.nnz, ds.valid.nnz, ds.test.nnz) == (2, 4, 5, 1, 1)
    assert list(ds.titles) == [None, "Alpha", "Beta", None, "Delta"]


def test_dealrec_missing_file(tmp_path: Path) -> None:
    root = _dealrec_dir(tmp_path / "d")
    (root / "sequential_valid.txt").unlink()
    _raises(load_dealrec_dir, root, path=root / "sequential_valid.txt", match="not found")
    _raises(load_dealrec_dir, tmp_path / "nope", path=tmp_path / "nope", match="not found")


def test_dealrec_non_integer_id(tmp_path: Path) -> None:
    root = _dealrec_dir(tmp_path / "d", train="1 1 2 3\n2 x 4\n")
    _raises(load_dealrec_dir, root, path=root / "sequential_train.txt", line=2, field="item 1",
            match="'x'")
    root = _dealrec_dir(tmp_path / "e", test="1\nu2 1\n")
    _raises(load_dealrec_dir, root, path=root / "sequential_test.txt", line=2, field="user_id")


def test_dealrec_unknown_item(tmp_path: Path) -> None:
    root = _dealrec_dir(tmp_path / "d", valid="1 4\n2 9\n")
    _raises(load_dealrec_dir, root, path=root / "sequential_valid.txt", line=2, field="item 1",
            match="unknown item id 9")


def test_dealrec_user_absent_from_train(tmp_path: Path) -> None:
    root = _dealrec_dir(tmp_path / "d", test="1\n7 1\n")
    _raises(load_dealrec_dir, root, path=root / "sequential_test.txt", line=2, field="user_id",
            match="user 7 is absent from the training period")


def test_dealrec_empty_training_sequence(tmp_path: Path) -> None:
    root = _dealrec_dir(tmp_path / "d", train="1 1 2 3\n2\n")
    _raises(load_dealrec_dir, root, path=root / "sequential_train.txt", line=2,
            match="empty training sequence")


def test_dealrec_duplicate_item_in_items_tsv(tmp_path: Path) -> None:
    items = ITEMS_TSV + "2\tB2b\tBeta again\n"
    root = _dealrec_dir(tmp_path / "d", items=items)
    _raises(load_dealrec_dir, root, path=root / "items.tsv", line=6, field="item_id",
            match="duplicate item id 2")


def test_dealrec_wrong_field_count_in_items_tsv(tmp_path: Path) -> None:
    items = ITEMS_TSV.replace("2\tB2\tBeta\n", "2\tBeta\n")
    root = _dealrec_dir(tmp_path / "d", items=items)
    _raises(load_dealrec_dir, root, path=root / "items.tsv", line=3, match="expected 3")


def test_dealrec_pickle_needs_trust(tmp_path: Path) -> None:
    root = _dealrec_dir(tmp_path / "d", items=None)
    maps = {"seqid2title": {"1": "Alpha", "2": "Beta", "3": "title_3", "4": "Delta"}}
    np.save(root / "title_maps.npy", maps, allow_pickle=True)
    _raises(load_dealrec_dir, root, path=root / "title_maps.npy", match="trust_pickle=True")
    ds = load_dealrec_dir(root, trust_pickle=True)
    assert list(ds.titles) == [None, "Alpha", "Beta", None, "Delta"]  # placeholder -> None


# ------------------------------------------------------------------------------------------
# Raw log loader
# ------------------------------------------------------------------------------------------

LOG = "user,item,rating,timestamp\n1,a,5,10\n2,b,4,11\n1,b,5,12\n2,a,4,13\n"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_raw_missing_file_and_extension(tmp_path: Path) -> None:
    _raises(load_raw_log, tmp_path / "log.csv", path=tmp_path / "log.csv", match="not found")
    p = _write(tmp_path / "log.json", LOG)
    _raises(load_raw_log, p, path=p, match="unknown file type '.json'")


def test_raw_missing_column(tmp_path: Path) -> None:
    p = _write(tmp_path / "log.csv", LOG.replace("timestamp", "time"))
    err = _raises(load_raw_log, p, path=p, line=1, field="timestamp", match="missing column")
    assert "'user', 'item', 'rating', 'time'" in str(err)  # names the columns found
    _raises(load_raw_log, p, time_col="time", rating_col="stars", field="stars",
            match="missing column")


def test_raw_non_numeric_timestamp_and_rating(tmp_path: Path) -> None:
    p = _write(tmp_path / "log.csv", LOG.replace("1,b,5,12", "1,b,5,noon"))
    _raises(load_raw_log, p, path=p, line=4, field="timestamp", match="non-numeric")
    p = _write(tmp_path / "log.tsv", LOG.replace(",", "\t").replace("2\tb\t4", "2\tb\tgood"))
    _raises(load_raw_log, p, path=p, line=3, field="rating", match="'good'")
    p = _write(tmp_path / "missing.csv", LOG.replace("2,a,4,13", "2,a,4,"))
    _raises(load_raw_log, p, path=p, line=5, field="timestamp", match="missing")


def test_raw_missing_ids(tmp_path: Path) -> None:
    p = _write(tmp_path / "log.csv", LOG.replace("2,b,4,11", ",b,4,11"))
    _raises(load_raw_log, p, path=p, line=3, field="user", match="missing user id")
    p = _write(tmp_path / "log2.csv", LOG.replace("2,a,4,13", "2,,4,13"))
    _raises(load_raw_log, p, path=p, line=5, field="item", match="missing item id")


def test_raw_parquet_non_numeric_names_row(tmp_path: Path) -> None:
    p = tmp_path / "log.parquet"
    pd.DataFrame({"user": [1, 2], "item": ["a", "b"], "timestamp": ["1", "x"]}).to_parquet(p)
    _raises(load_raw_log, p, path=p, field="timestamp", match="(row 2)")


@pytest.mark.parametrize("split", [(0.8, 0.1, 0.2), (0.9, 0.1, 0.0), (1.2, -0.1, -0.1),
                                   (0.8, 0.2), "abc"])
def test_raw_bad_split(tmp_path: Path, split) -> None:
    p = _write(tmp_path / "log.csv", LOG)
    _raises(load_raw_log, p, split=split, field="split")


def test_raw_empty_after_filtering(tmp_path: Path) -> None:
    p = _write(tmp_path / "log.csv", LOG.replace(",5,", ",3,").replace(",4,", ",2,"))
    _raises(load_raw_log, p, path=p, field="rating", match="no interactions left")
    p = _write(tmp_path / "header.csv", "user,item,rating,timestamp\n")
    _raises(load_raw_log, p, path=p, match="no interactions")
    p = _write(tmp_path / "empty.csv", "")
    _raises(load_raw_log, p, path=p, match="empty log file")


def test_raw_empty_training_period(tmp_path: Path) -> None:
    p = _write(tmp_path / "log.csv", "user,item,timestamp\n1,a,1\n")
    _raises(load_raw_log, p, path=p, field="split", match="training period is empty")


def test_raw_item_table_errors(tmp_path: Path) -> None:
    p = _write(tmp_path / "log.csv", LOG)
    items = _write(tmp_path / "items.csv", "item,title\na,Alpha\nb,Beta\na,Again\n")
    err = _raises(load_raw_log, p, items=items, path=items, line=4, field="item",
                  match="duplicate item id 'a'")
    assert "first on line 2" in str(err)
    _raises(load_raw_log, p, items=tmp_path / "none.csv", path=tmp_path / "none.csv",
            match="item table file not found")
    items = _write(tmp_path / "items2.csv", "item,name\na,Alpha\n")
    _raises(load_raw_log, p, items=items, path=items, field="title", match="columns found")


def test_raw_parse_error_names_line(tmp_path: Path) -> None:
    p = _write(tmp_path / "log.csv", LOG + "3,c,5,14,extra,more\n")
    _raises(load_raw_log, p, path=p, line=6, match="more fields than the 4 columns")
    p = _write(tmp_path / "log.tsv", LOG.replace(",", "\t") + "3\tc\t5\t14\textra\n")
    _raises(load_raw_log, p, path=p, line=6, match="unquoted tab")


def test_split_log_direct_errors() -> None:
    _raises(split_log, [], [], [], match="empty")
    _raises(split_log, [1, 2], [1], [1, 2], match="equal length")
    _raises(split_log, [1, 2], [1, 2], ["a", "b"], field="timestamp")
    _raises(split_log, [1, 2], [1, 2], [1.0, np.nan], field="timestamp")
    _raises(split_log, np.array([1, None], dtype=object), [1, 2], [1, 2], field="user")
    _raises(split_log, [1, 2], [1.0, np.nan], [1, 2], field="item")


def test_load_dataset_bad_spec(tmp_path: Path) -> None:
    _raises(load_dataset, tmp_path / "missing", path=tmp_path / "missing", match="no such")
    _raises(load_dataset, "synthetic:abc", match="N_USERS")
    _raises(load_dataset, "synthetic:0", match="N_USERS")
