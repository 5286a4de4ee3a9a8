import subprocess
import sys

import pytest

from flopwatch.sources.redact import is_secret_name, redact_cmdline, redact_environ, redact_text, redact_value


def test_token_flag_with_equals_is_hidden():
    assert redact_cmdline(["python", "serve.py", "--token=abc123"]) == "python serve.py --token=***"


def test_password_flag_takes_the_next_argument_as_its_secret():
    argv = ["psql", "--password", "hunter2", "--host", "db"]
    assert redact_cmdline(argv) == "psql --password *** --host db"


def test_a_secret_flag_followed_by_another_flag_hides_nothing():
    argv = ["train.py", "--use-auth-token", "--epochs", "3"]
    assert redact_cmdline(argv) == "train.py --use-auth-token --epochs 3"


def test_api_key_in_both_spellings():
    assert redact_cmdline(["x", "--api-key", "k1", "--apiKey=k2"]) == "x --api-key *** --apiKey=***"


def test_environment_assignment_as_argument_is_hidden():
    argv = ["docker", "run", "-e", "HF_TOKEN=hf_secret", "-e", "PASSWORD=pw", "image"]
    assert redact_cmdline(argv) == "docker run -e HF_TOKEN=*** -e PASSWORD=*** image"


def test_assignments_inside_a_shell_string_are_hidden():
    argv = ["bash", "-c", "export DB_PASSWORD=pw; AWS_SECRET_ACCESS_KEY=abc run.sh --n 3"]
    assert redact_cmdline(argv) == "bash -c export DB_PASSWORD=***; AWS_SECRET_ACCESS_KEY=*** run.sh --n 3"


def test_flag_and_value_inside_one_string_are_hidden():
    assert redact_cmdline(["worker --token abc123 --port 80"]) == "worker --token *** --port 80"


def test_url_password_is_hidden_and_user_and_host_kept():
    argv = ["app", "--db", "postgresql://alice:s3cret@db.example:5432/jobs"]
    assert redact_cmdline(argv) == "app --db postgresql://alice:***@db.example:5432/jobs"


def test_token_in_a_query_string_is_hidden():
    assert redact_text("https://h/api?token=abc&page=2") == "https://h/api?token=***&page=2"


def test_bearer_header_is_hidden():
    argv = ["curl", "-H", "Authorization: Bearer eyabcdefghijkl", "https://h/"]
    assert "eyabcdefghijkl" not in redact_cmdline(argv)


@pytest.mark.parametrize("secret", [
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_" + "a" * 36,
    "hf_" + "b" * 34,
    "sk-" + "c" * 40,
    "xoxb-1234567890-abcdef",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abc",
])
def test_well_known_token_shapes_are_hidden_wherever_they_appear(secret):
    assert redact_cmdline(["tool", "--input", f"x{' '}{secret}"]) == "tool --input x ***"


def test_mysql_attached_password_is_hidden_but_other_programs_p_is_kept():
    assert redact_cmdline(["mysql", "-uroot", "-phunter2", "db"]) == "mysql -uroot -p*** db"
    assert redact_cmdline(["sshpass", "-p", "hunter2", "ssh", "h"]) == "sshpass -p *** ssh h"
    assert redact_cmdline(["docker", "run", "-p", "8080:80", "img"]) == "docker run -p 8080:80 img"


def test_ordinary_arguments_pass_unchanged():
    argv = ["vllm", "serve", "meta/llama", "--max-num-batched-tokens", "8192", "--tokenizer", "t",
            "--ssl-keyfile", "/etc/k.pem", "--port", "8000"]
    assert redact_cmdline(argv) == " ".join(argv)


def test_empty_command_line_is_empty():
    assert redact_cmdline([]) == ""


@pytest.mark.parametrize("name", ["HF_TOKEN", "PGPASSWORD", "WANDB_API_KEY", "client_secret",
                                  "--password", "AUTH", "GOOGLE_APPLICATION_CREDENTIALS", "apiKey"])
def test_secret_names(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["PWD", "SSH_AUTH_SOCK", "--key-file", "--max-tokens", "AUTHOR",
                                  "CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "--tokenizer"])
def test_harmless_names(name):
    assert not is_secret_name(name)


def test_environment_values_are_hidden_by_name_or_by_shape():
    env = {"HF_TOKEN": "hf_x", "SLURM_JOB_ID": "42", "DATABASE_URL": "mysql://u:pw@h/db", "EMPTY_KEY": ""}
    assert redact_environ(env) == {"HF_TOKEN": "***", "SLURM_JOB_ID": "42",
                                   "DATABASE_URL": "mysql://u:***@h/db", "EMPTY_KEY": ""}


def test_redact_value_keeps_a_harmless_value():
    assert redact_value("CUDA_VISIBLE_DEVICES", "0,1") == "0,1"


def test_a_real_process_is_shown_with_its_secrets_hidden():
    from flopwatch.sources.host import HostSource

    process = subprocess.Popen([sys.executable, "-c", "import sys; print(flush=True); sys.stdin.read()",
                                "--token=abc123", "PASSWORD=hunter2"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        process.stdout.readline()  # running its own command line (until exec, /proc showed the parent's)
        seen = HostSource().read([process.pid], timestamp=0.0).processes[process.pid]
    finally:
        process.communicate(b"")
    assert seen.cmdline.endswith("--token=*** PASSWORD=***")
    assert "abc123" not in seen.cmdline and "hunter2" not in seen.cmdline
