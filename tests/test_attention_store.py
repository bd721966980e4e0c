"""The attention store's schema: scheduler timesteps with σ along them, and a store of another version refused."""

import numpy as np
import pytest
import zarr

from seg4diff.data.attention_store import (
    SCHEMA_VERSION,
    StoreLayout,
    StoreVersionError,
    create_store,
    open_attention,
    sigma_index,
)
from seg4diff.errors import ConfigError

LAYOUT = StoreLayout(
    samples=2, layers=[0, 1], heads=[-1], sigmas=[0.1, 0.5151], tokens=3, grid=(2, 2), directions=("image_to_text",)
)


def test_the_timestep_dim_holds_scheduler_timesteps_with_sigma_as_its_coordinate(tmp_path):
    create_store(tmp_path / "a.zarr", LAYOUT, {"fingerprint": "x"})
    store = open_attention(tmp_path / "a.zarr")
    assert store.image_to_text.dims == ("sample", "layer", "head", "timestep", "token", "y", "x")
    np.testing.assert_allclose(store.timestep.values, [100.0, 515.1])  # σ · 1000: what the transformer is given
    assert store.sigma.dims == ("timestep",) and store.sigma.values.tolist() == [0.1, 0.5151]
    assert sigma_index(store, [0.5151]) == [1]
    assert store.swap_dims(timestep="sigma").sel(sigma=0.1).timestep.item() == pytest.approx(100.0)
    with pytest.raises(ValueError, match=r"sigmas \[0.3\] are not in the attention store"):
        sigma_index(store, [0.3])


def test_a_store_of_another_schema_version_is_refused_in_one_line_that_says_how_to_rebuild_it(tmp_path):
    path = tmp_path / "old.zarr"
    create_store(path, LAYOUT, {"fingerprint": "x"})
    zarr.open_group(path, mode="r+", zarr_format=3).attrs["schema_version"] = SCHEMA_VERSION - 1
    with pytest.raises(StoreVersionError) as raised:
        open_attention(path)
    message = str(raised.value)
    assert "\n" not in message and f"schema version {SCHEMA_VERSION - 1}" in message and str(path) in message
    assert "dvc repro extract" in message and isinstance(raised.value, ConfigError)  # a setting to fix, never retried
