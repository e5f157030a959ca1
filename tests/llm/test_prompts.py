import pytest

from kb.llm import prompts


def test_every_prompt_file_matches_its_locked_hash():
    """Changing a prompt's text without giving it a new version id fails here: add a new file instead, and
    its hash to kb/llm/prompts/versions.lock."""
    lock = prompts.lock()
    files = prompts.available()
    assert files, "no prompt files"
    assert sorted(lock) == files, "every prompt file needs a lock entry, and every lock entry a file"
    for prompt_id in files:
        assert prompts.file_sha256(prompts.PROMPTS_DIR / f"{prompt_id}.txt") == lock[prompt_id], (
            f"prompt {prompt_id} changed under the same version: save the new text as a new version"
        )


def test_the_configured_prompt_loads_and_records_id_and_hash(settings):
    prompt = prompts.get(settings.KB_PROMPT_VERSION)
    assert prompt.version == f"{prompt.id}@{prompts.lock()[prompt.id][:12]}"
    message = prompt.user_message(passages='<passage n="1">x</passage>', question="Why?", history="")
    assert "Why?" in message and "<passages>" in message and "$" not in message
    assert "[1]" in prompt.system and "does not cover this question" in prompt.system


@pytest.mark.parametrize("prompt_id", ["../settings", "nope", "", "Answer-V1"])
def test_an_unknown_prompt_id_names_the_ones_there_are(prompt_id):
    with pytest.raises(prompts.PromptError, match="answer-v1"):
        prompts.get(prompt_id)
