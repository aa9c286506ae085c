"""
maxq.secrets: which env keys are secret, and masking them in text.
"""

from __future__ import annotations


import pytest

from maxq.secrets import (
    MASK, is_secret_key, mask_env, mask_output, mask_text, secret_values,
)
from maxq.tokens import Credentials


@pytest.mark.parametrize("key", [
    "API_KEY", "api_key", "Deploy_Key", "GITHUB_TOKEN", "my_token", "AWS_SECRET",
    "client_secret", "PASSWORD", "DB_PASSWORD", "password_file", "PGPASSWORD", "MAXQ_TOKEN",
])
def test_is_secret_key_yes(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", [
    "KEY", "KEYBOARD", "TOKENS", "SECRETS_DIR", "MONKEY", "PATH", "HOME", "SHARD",
])
def test_is_secret_key_no(key):
    assert not is_secret_key(key)


def test_secret_values_longest_first_and_at_least_four_characters():
    env = {"A_KEY": "abcd", "B_KEY": "abcdefgh", "C_KEY": "abc", "PLAIN": "abcdefghij",
           "D_TOKEN": ""}
    assert secret_values(env) == ["abcdefgh", "abcd"]


def test_mask_output_replaces_every_occurrence():
    env = {"API_KEY": "sk-123456", "X_TOKEN": "sk-1234", "OTHER": "sk-123456789"}
    text = "a sk-123456 b sk-1234 c sk-123456789\n"
    # The longer secret is masked whole; a non-secret value that contains a
    # secret still has that secret masked.
    assert mask_output(text, env) == f"a {MASK} b {MASK} c {MASK}789\n"
    assert mask_output(text, {}) == text
    assert mask_output("", env) == ""


def test_mask_text_masks_a_leading_fragment():
    secret = "0123456789abcdef"
    assert mask_text("89abcdef rest", [secret]) == f"{MASK} rest"
    assert mask_text("cdef rest", [secret]) == f"{MASK} rest"
    # Three characters are not worth masking (nor distinguishable from text).
    assert mask_text("def rest", [secret]) == "def rest"
    # Only at the very start: the tail of the output may begin mid-secret.
    assert mask_text("x 89abcdef", [secret]) == "x 89abcdef"


def test_mask_text_on_large_inputs():
    # How fast is the benchmark's business; here only that it is right.
    secret = "ab" * 16000 + "c"
    text = "ab" * 32000
    assert mask_text(text, [secret]) == text
    assert mask_text(text + secret, [secret]) == text + "***"


def test_script_tokens_are_masked_by_shape():
    creds = Credentials(("key",))
    run_token = creds.script_token("4b7c1e0a-0000-4000-8000-000000000000")
    step_token = creds.script_token("4b7c1e0a-0000-4000-8000-000000000000", "step-1")
    text = f"T={run_token}\nS={step_token}\n"
    assert mask_text(text) == f"T={MASK}\nS={MASK}\n"
    assert "mxq1.not-a-token" == mask_text("mxq1.not-a-token")


def test_mask_env_shows_secret_keys_as_mask():
    assert mask_env({"API_KEY": "a", "PLAIN": "b", "EMPTY_SECRET": ""}) == {
        "API_KEY": MASK, "PLAIN": "b", "EMPTY_SECRET": ""}
    assert mask_env(None) is None
