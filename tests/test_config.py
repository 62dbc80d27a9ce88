"""ModelConfig: valid values give the right number of levels, invalid ones a ValueError naming the field."""
import pytest

from wavenet_conv.models.config import ModelConfig


@pytest.mark.parametrize("block_size, n_levels", [(2, 1), (4, 2), (8, 3), (16, 4), (32, 5)])
def test_levels_are_log2_of_block_size(block_size, n_levels):
    assert ModelConfig(block_size=block_size).n_levels == n_levels


def test_defaults_are_the_lectures():
    assert ModelConfig().to_dict() == {"vocab_size": 27, "block_size": 8, "n_embd": 24, "n_hidden": 128,
                                       "arch": "lecture", "dropout": 0.0}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"block_size": 0}, "block_size must be a power of two"),
        ({"block_size": 1}, "block_size must be a power of two"),
        ({"block_size": 3}, "block_size must be a power of two"),
        ({"block_size": 6}, "block_size must be a power of two"),
        ({"block_size": -8}, "block_size must be a power of two"),
        ({"block_size": 8.0}, "block_size must be an integer"),
        ({"block_size": "8"}, "block_size must be an integer"),
        ({"block_size": True}, "block_size must be an integer"),
        ({"vocab_size": 1}, "vocab_size must be at least 2"),
        ({"vocab_size": 0}, "vocab_size must be at least 2"),
        ({"n_hidden": 0}, "n_hidden must be positive"),
        ({"n_embd": 0}, "n_embd and n_hidden must be positive"),
        ({"n_embd": 2.5}, "n_embd must be an integer"),
    ],
)
def test_invalid_values_raise_a_clear_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        ModelConfig(**kwargs)
    text = str(error.value)
    assert "\n" not in text
    assert repr(next(iter(kwargs.values()))) in text or str(next(iter(kwargs.values()))) in text  # names the value
