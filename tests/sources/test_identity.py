"""Who runs a GPU process: cgroup paths as the kernel writes them, environments, and the job rule."""

import os
import subprocess
import sys
import time

import psutil
import pytest

from flopwatch.model import Identity
from flopwatch.sources.host import HostSource
from flopwatch.sources.identity import (JOB_RULES, BadJobRule, check_rules, identify, job_name, parse_cgroup, parse_environ,
                                       parse_pod_labels,
                                       read_identity)

CONTAINER = "3f2a9c1d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f"
POD_UID = "5d1c2b3a-4e5f-6789-abcd-ef0123456789"

DOCKER_V2_SYSTEMD = f"0::/system.slice/docker-{CONTAINER}.scope\n"
DOCKER_V1_CGROUPFS = f"""12:pids:/docker/{CONTAINER}
11:memory:/docker/{CONTAINER}
1:name=systemd:/docker/{CONTAINER}
"""
K8S_V2_SYSTEMD = (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_UID.replace('-', '_')}.slice/"
                  f"cri-containerd-{CONTAINER}.scope\n")
K8S_V1_CGROUPFS = f"""11:memory:/kubepods/besteffort/pod{POD_UID}/{CONTAINER}
4:cpu,cpuacct:/kubepods/besteffort/pod{POD_UID}/{CONTAINER}
"""
K8S_GUARANTEED_CRIO = f"0::/kubepods.slice/kubepods-pod{POD_UID.replace('-', '_')}.slice/crio-{CONTAINER}.scope\n"
SLURM_V1 = """7:devices:/slurm/uid_1000/job_4242/step_0/task_0
4:memory:/slurm/uid_1000/job_4242/step_0/task_0
1:name=systemd:/user.slice/user-1000.slice/session-3.scope
"""
SLURM_V2 = "0::/system.slice/slurmstepd.scope/job_777/step_batch/user/task_0\n"
SYSTEMD_SERVICE = "0::/system.slice/vllm-server.service\n"
LOGIN_SESSION = "0::/user.slice/user-1000.slice/session-7.scope\n"
USER_MANAGER_APP = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/jupyter.service\n"


def test_docker_container_id_from_cgroup_v2_systemd_driver():
    assert parse_cgroup(DOCKER_V2_SYSTEMD) == Identity(container_id=CONTAINER[:12])


def test_docker_container_id_from_cgroup_v1_cgroupfs_driver():
    assert parse_cgroup(DOCKER_V1_CGROUPFS).container_id == CONTAINER[:12]


@pytest.mark.parametrize("text", [K8S_V2_SYSTEMD, K8S_V1_CGROUPFS, K8S_GUARANTEED_CRIO])
def test_kubernetes_pod_uid_and_container_from_any_driver(text):
    found = parse_cgroup(text)
    assert (found.pod_uid, found.container_id, found.unit) == (POD_UID, CONTAINER[:12], None)


@pytest.mark.parametrize("text,job", [(SLURM_V1, "4242"), (SLURM_V2, "777")])
def test_slurm_job_from_cgroup_v1_and_v2(text, job):
    found = parse_cgroup(text)
    assert (found.slurm_job, found.unit) == (job, None)


def test_a_service_is_the_unit_but_a_login_session_is_not():
    assert parse_cgroup(SYSTEMD_SERVICE).unit == "vllm-server.service"
    assert parse_cgroup(LOGIN_SESSION) == Identity()
    assert parse_cgroup(USER_MANAGER_APP).unit == "jupyter.service"


def test_only_whitelisted_variables_are_taken_from_the_environment():
    env = parse_environ(b"SLURM_JOB_ID=99\0HF_TOKEN=hf_secret\0HOSTNAME=trainer-7f9c\0PATH=/bin\0")
    assert env == {"SLURM_JOB_ID": "99", "HOSTNAME": "trainer-7f9c"}


def test_pod_name_is_the_hostname_only_inside_a_kubernetes_cgroup():
    env = {"HOSTNAME": "llama-serve-5c6d7-abcde", "POD_NAMESPACE": "inference"}
    assert identify(K8S_V2_SYSTEMD, env).pod == "llama-serve-5c6d7-abcde"
    assert identify(K8S_V2_SYSTEMD, env).namespace == "inference"
    assert identify(DOCKER_V2_SYSTEMD, env).pod is None


def test_the_cgroup_slurm_job_wins_over_an_inherited_variable():
    assert identify(SLURM_V2, {"SLURM_JOB_ID": "1"}).slurm_job == "777"
    assert identify("0::/\n", {"SLURM_JOB_ID": "1"}).slurm_job == "1"


def test_job_names_follow_the_rules_in_order():
    ident = Identity(container_id="abc", pod_uid=POD_UID, pod="p", namespace="ns", slurm_job="5", unit="x.service")
    assert job_name(["slurm", "pod"], ident, "alice", "python") == "slurm:5"
    assert job_name(["pod", "slurm"], ident, "alice", "python") == "pod:ns/p"
    assert job_name(["unit"], ident, "alice", "python") == "unit:x.service"
    assert job_name(["container"], ident, "alice", "python") == "container:abc"
    assert job_name(["user_command", "slurm"], ident, "alice", "python") == "alice:python"
    assert job_name(["slurm"], Identity(), "alice", "python") == "alice:python"


# What torch.distributed.elastic's agent puts in each worker's environment (a few of its variables).
TORCHRUN_WORKER = b"LOCAL_RANK=1\0RANK=1\0GROUP_RANK=0\0ROLE_NAME=default\0LOCAL_WORLD_SIZE=4\0" \
                  b"MASTER_ADDR=127.0.0.1\0MASTER_PORT=29500\0TORCHELASTIC_RESTART_COUNT=0\0TORCHELASTIC_RUN_ID=none\0"


def test_a_torchrun_worker_without_a_rendezvous_id_is_its_run_s_master_address_and_port():
    found = identify("0::/user.slice/user-1000.slice/session-3.scope\n", parse_environ(TORCHRUN_WORKER))
    assert job_name(JOB_RULES, found, "alice", "python") == "torchrun:127.0.0.1:29500"


def test_two_torchrun_runs_of_one_user_are_two_jobs_and_the_ranks_of_one_are_one():
    rank0 = parse_environ(TORCHRUN_WORKER.replace(b"RANK=1", b"RANK=0"))
    other_run = parse_environ(TORCHRUN_WORKER.replace(b"29500", b"29501"))
    names = {job_name(JOB_RULES, identify(LOGIN_SESSION, env), "alice", "python")
             for env in (parse_environ(TORCHRUN_WORKER), rank0, other_run)}
    assert names == {"torchrun:127.0.0.1:29500", "torchrun:127.0.0.1:29501"}


def test_a_torchrun_rendezvous_id_names_the_run():
    env = parse_environ(TORCHRUN_WORKER.replace(b"TORCHELASTIC_RUN_ID=none", b"TORCHELASTIC_RUN_ID=llama-sft-7"))
    assert job_name(JOB_RULES, identify(LOGIN_SESSION, env), "alice", "python") == "torchrun:llama-sft-7"


def test_a_master_address_without_torchrun_is_no_torchrun_job():
    env = parse_environ(b"MASTER_ADDR=10.0.0.1\0MASTER_PORT=29500\0")
    assert identify(LOGIN_SESSION, env).torchrun is None


def test_a_torchrun_run_inside_a_slurm_job_is_the_slurm_job():
    assert job_name(JOB_RULES, identify(SLURM_V2, parse_environ(TORCHRUN_WORKER)), "alice", "python") == "slurm:777"


def test_an_unknown_rule_is_an_error_that_lists_the_valid_ones():
    with pytest.raises(BadJobRule, match=r"kubernetes.*valid: slurm, pod, torchrun, container, unit, user_command"):
        check_rules(["slurm", "kubernetes"])


def _sleeper(env: dict[str, str]) -> subprocess.Popen:
    """A process with ``env``, once it runs: a process caught mid-exec has no environment to read yet."""
    child = subprocess.Popen([sys.executable, "-c", "import time; print(flush=True); time.sleep(60)"],
                             env={**os.environ, **env}, stdout=subprocess.PIPE)
    child.stdout.readline()
    return child


def test_a_real_process_with_slurm_job_id_is_job_slurm_id():
    child = _sleeper({"SLURM_JOB_ID": "123"})
    try:
        host = HostSource(job_rules=["slurm", "pod", "container", "unit", "user_command"])
        process = host.read([child.pid], time.time()).processes[child.pid]
        assert (process.job, process.identity.slurm_job) == ("slurm:123", "123")
    finally:
        child.kill()
        child.wait()


def test_real_torchrun_workers_of_two_runs_are_two_jobs():
    env = {"TORCHELASTIC_RUN_ID": "none", "MASTER_ADDR": "127.0.0.1", "LOCAL_RANK": "0"}
    workers = [_sleeper({**env, "MASTER_PORT": port}) for port in ("29500", "29500", "29501")]
    try:
        seen = HostSource().read([w.pid for w in workers], time.time()).processes
        assert [seen[w.pid].job for w in workers] == ["torchrun:127.0.0.1:29500"] * 2 + ["torchrun:127.0.0.1:29501"]
    finally:
        for w in workers:
            w.kill()
            w.wait()


def test_a_real_process_without_identity_is_user_and_command():
    child = _sleeper({})
    try:
        process = HostSource().read([child.pid], time.time()).processes[child.pid]
        me = psutil.Process(child.pid)
        assert process.job == f"{me.username()}:{me.name()}"
    finally:
        child.kill()
        child.wait()


def test_a_proc_tree_with_a_kubernetes_pod(tmp_path):
    proc = tmp_path / "4321"
    (proc / "root/var/run/secrets/kubernetes.io/serviceaccount").mkdir(parents=True)
    (proc / "cgroup").write_text(K8S_V1_CGROUPFS)
    (proc / "environ").write_bytes(b"HOSTNAME=llama-serve-0\0API_KEY=nope\0")
    (proc / "root/var/run/secrets/kubernetes.io/serviceaccount/namespace").write_text("inference\n")
    found = read_identity(4321, str(tmp_path))
    assert (found.pod, found.namespace, found.pod_uid) == ("llama-serve-0", "inference", POD_UID)
    assert job_name(["slurm", "pod"], found, "root", "python") == "pod:inference/llama-serve-0"


def test_an_unreadable_process_has_an_empty_identity(tmp_path):
    assert read_identity(999999, str(tmp_path)) == Identity()


# -- one job across nodes, a rank each ------------------------------------------------------


def test_torchrun_worker_has_its_rank_world_size_and_local_rank():
    env = {"TORCHELASTIC_RUN_ID": "run7", "RANK": "11", "WORLD_SIZE": "16", "LOCAL_RANK": "3"}
    found = identify("", env)
    assert (found.torchrun, found.rank, found.world_size, found.local_rank) == ("run7", 11, 16, 3)


def test_slurm_task_rank_comes_from_slurm_procid_when_rank_is_unset():
    found = identify(SLURM_V1, {"SLURM_PROCID": "5", "SLURM_NTASKS": "32", "SLURM_LOCALID": "1"})
    assert (found.slurm_job, found.rank, found.world_size, found.local_rank) == ("4242", 5, 32, 1)


def test_rank_from_launcher_beats_slurm_procid():
    assert identify("", {"RANK": "9", "SLURM_PROCID": "1"}).rank == 9


def test_rank_variables_pass_the_environ_whitelist():
    env = parse_environ(b"RANK=3\0WORLD_SIZE=8\0LOCAL_RANK=3\0SLURM_PROCID=3\0AWS_SECRET=x\0")
    assert env == {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3", "SLURM_PROCID": "3"}


def test_jobset_pods_on_two_nodes_share_one_job_name():
    labels = {"jobset.sigs.k8s.io/jobset-name": "llama-pretrain"}
    names = {job_name(JOB_RULES, identify(K8S_V2_SYSTEMD, {"HOSTNAME": pod, "RANK": str(r)}, "ml", labels),
                      "alice", "python")
             for r, pod in enumerate(["llama-pretrain-workers-0-0", "llama-pretrain-workers-0-1"])}
    assert names == {"jobset:ml/llama-pretrain"}


def test_pytorchjob_and_mpijob_owners_come_from_the_training_operator_labels():
    for operator, kind in (("pytorchjob-controller", "pytorchjob"), ("mpijob-controller", "mpijob")):
        labels = {"training.kubeflow.org/operator-name": operator, "training.kubeflow.org/job-name": "bert"}
        assert identify(K8S_V2_SYSTEMD, {"HOSTNAME": "bert-worker-1"}, "ml", labels).pod_owner == f"{kind}:ml/bert"


def test_leaderworkerset_group_is_named_by_its_leader_address():
    env = {"HOSTNAME": "vllm-0-2", "LWS_LEADER_ADDRESS": "vllm-0.vllm.serving"}
    assert identify(K8S_V2_SYSTEMD, env, "serving").pod_owner == "leaderworkerset:serving/vllm-0"


def test_a_pod_of_its_own_keeps_its_pod_name():
    found = identify(K8S_V2_SYSTEMD, {"HOSTNAME": "notebook-0"}, "ml", {"app": "jupyter"})
    assert job_name(JOB_RULES, found, "alice", "python") == "pod:ml/notebook-0"


def test_downward_api_labels_file_is_parsed():
    assert parse_pod_labels('app="x"\njobset.sigs.k8s.io/jobset-name="j"\n') == {
        "app": "x", "jobset.sigs.k8s.io/jobset-name": "j"}
