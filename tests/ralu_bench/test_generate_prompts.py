"""`ralu generate --prompts` refuses a prompt its model's text encoder would cut, before the model loads."""

from __future__ import annotations

from ralu_core.cli import main


def test_a_prompt_too_long_for_the_text_encoder_is_refused_before_loading(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n" + "a red circle and " * 20 + "a blue square\n", encoding="utf-8")
    code = main(["generate", "--prompts", str(prompts), "--out", str(tmp_path / "out"), "--model", "flux-shapes"])
    err = capsys.readouterr().err
    assert code == 2
    assert "1 prompt(s) longer than the 32 tokens its text encoder reads (tokenizer_2, max_sequence_length)" in err
    assert "prompt 2 (" in err and "--call-arg max_sequence_length=N" in err
    assert "note: flux-shapes" not in err  # printed when the model loads: it never did
    # Raising the limit lets it through the check (and the run goes on).
    base = ["generate", "--prompts", str(prompts), "--out", str(tmp_path / "out"), "--model", "flux-shapes"]
    code = main([*base, "--call-arg", "max_sequence_length=128", "--steps", "2", "--recipe", "flux-baseline"])
    assert code == 0 and len(list((tmp_path / "out").glob("*.png"))) == 2
