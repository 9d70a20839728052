import json
import subprocess
import sys

from segllm.cli import main


def test_info_prints_components_and_counts(capsys):
    assert main(["info", "lisa-7b"]) == 0
    out = capsys.readouterr().out
    assert "LoRA r=8 alpha=16 on q_proj,v_proj" in out
    assert "mask encoder  off" in out
    assert "641,090,608" not in out  # per-component rows, SAM split in three
    assert "637,026,048" in out and "303,179,776" in out


def test_info_json_and_console_script():
    proc = subprocess.run([sys.executable, "-m", "segllm.cli", "info", "segllm-7b", "--json"],
                          capture_output=True, text=True, check=True)
    data = json.loads(proc.stdout)
    assert data["parameters"]["vision_tower"]["total"] == 303_507_456
    assert data["parameters"]["all"]["trainable"] == 6_777_770_240 + 4_684  # + reference-mask input


def test_unknown_preset_is_refused(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["info", "gpt-5"])
    assert "invalid choice: 'gpt-5'" in capsys.readouterr().err
