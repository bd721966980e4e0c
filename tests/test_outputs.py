"""Tracked text outputs: floats at 6 significant digits, and a file whose content is unchanged is not rewritten."""

import json
import os

import numpy as np
import pandas as pd

from seg4diff.reporting.outputs import round_floats, write_csv, write_json


def test_floats_rounded_to_six_significant_digits_everywhere():
    data = {
        "a": 0.123456789,
        "b": [1234.56789, np.float32(2.5e-7) * 1.0000001],
        "c": {"d": 3, "e": float("nan"), "f": 0.0},
    }
    rounded = round_floats(data)
    assert rounded["a"] == 0.123457 and rounded["b"][0] == 1234.57 and rounded["b"][1] == 2.5e-07
    assert rounded["c"]["d"] == 3 and np.isnan(rounded["c"]["e"]) and rounded["c"]["f"] == 0.0


def test_noise_below_the_precision_leaves_the_file_untouched(tmp_path):
    path = tmp_path / "m.json"
    assert write_json(path, {"miou": 0.63360012})
    os.utime(path, (0, 0))
    assert not write_json(path, {"miou": 0.63360014})  # another machine's last bits
    assert os.stat(path).st_mtime == 0 and json.loads(path.read_text()) == {"miou": 0.6336}
    assert write_json(path, {"miou": 0.6337})  # a real change is written
    table = pd.DataFrame({"layer": [0, 1], "value": [0.1234567891, 0.5]})
    assert write_csv(table, tmp_path / "t.csv") and not write_csv(table + [0, 1e-12], tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text() == "layer,value\n0,0.123457\n1,0.5\n"
