#!/usr/bin/env bash
# dev/local-cluster.sh -- a REAL SLURM cluster of N nodes on one machine, on 127.0.0.1, started by hand (no systemd).
# Test and development infrastructure (`make cluster`, `make cluster-stop`); nothing in the product uses it.
#
#   sudo dev/local-cluster.sh start [--nodes N]  # install if needed, configure, start, wait until every node is idle
#   sudo dev/local-cluster.sh status             # exit 0 only if the controller is up and every node usable
#   sudo dev/local-cluster.sh stop               # stop every slurmd, slurmctld, slurmdbd, mariadb (and munged if ours)
#
# Nodes are always named node1..nodeN (also for N=1), whatever this machine's hostname: one slurmctld and
# slurmdbd, and N slurmd daemons, each started as `slurmd -N nodeI` with its own Port, spool folder, log and
# pid file. `start` without --nodes keeps the node count of the cluster configured now (1 on a fresh machine),
# so a bare `start` never tears down a bigger cluster that someone started; `start --nodes M` reconfigures.
#
# Everything is idempotent: `start` on a running, unchanged cluster only verifies it (well under a second),
# `start` after a crash/reboot starts only what is missing, and `start` after a config change (other node
# count, other host, other memory size, new version of this script) restarts only the daemons whose config
# changed, stops the slurmd daemons of nodes no longer configured (also the single `hostname -s` node of
# this script's earlier layout), and leaves slurmctld's saved state of vanished nodes to slurmctld (it logs
# "Node ... vanished from configuration" and forgets them). Running jobs survive a slurmctld/slurmd restart
# (slurmstepd keeps them alive); jobs on a node that is removed are killed.
#
# Layout
#   /etc/slurm/slurm.conf, /etc/slurm/slurmdbd.conf, /etc/slurm/cgroup.conf   generated, carry a "managed" marker
#       (clients such as sbatch/sacct, and hence submitit, only look at /etc/slurm/slurm.conf; we refuse to
#        overwrite a slurm.conf that we did not write unless PIXELRNN_SLURM_FORCE=1)
#   /etc/hosts          one marked block "127.0.0.1 node1 ... nodeN" (see "Node names" below); no other line
#                       is touched; the block is removed by `stop`
#   /var/lib/pixelrnn-slurm/{slurmctld,slurmd/<node>,mariadb,run}   controller state, per-node slurmd spool,
#                                                                    DB datadir, pid files (slurmd-<node>.pid)
#   /var/log/pixelrnn-slurm/*.log                            one log per daemon (slurmd-<node>.log per node)
#   Env overrides: PIXELRNN_SLURM_STATE, PIXELRNN_SLURM_LOGS, PIXELRNN_SLURM_DB_PORT (13306),
#                  PIXELRNN_SLURM_SLURMD_PORT (6820: nodeI's slurmd listens on 6820+I),
#                  PIXELRNN_SLURM_START_TIMEOUT (60, seconds to wait for the nodes).
#
# Settings that matter, and why
#   * Accounting through slurmdbd + MariaDB (AccountingStorageType=accounting_storage/slurmdbd).
#       submitit polls job state with `sacct`; without a slurmdbd, sacct errors, submitit swallows the error,
#       reports UNKNOWN and treats it as "not finished": a cancelled/failed job is never seen to end and
#       job.wait()/job.result() hang forever. MariaDB is our own instance (own datadir, run as `mysql`,
#       TCP on 127.0.0.1:13306 + a unix socket in the datadir, --skip-name-resolve because there is no DNS),
#       so it never clashes with a system MySQL on 3306. slurm_acct_db + user `slurm` are created
#       idempotently (random password generated once, stored 0600 in the state folder).
#       AccountingStorageEnforce is left unset: no association is needed to submit, but we still register
#       the cluster (sacctmgr add cluster) so the root account/user association exists.
#   * AuthInfo=cred_expire=10: a requeued job gets BeginTime = now + cred_expire + 1 s, so the default
#       (120 s) makes every requeue (scontrol requeue, submitit checkpoint/preemption) wait two minutes.
#   * SchedulerParameters=bf_interval=1,sched_interval=1: schedule every second instead of every 30/60 s.
#   * KillWait=5: SIGTERM -> SIGKILL after 5 s. submitit ignores SIGTERM ("bypassing signal"), so a cancel or
#       requeue of a submitit job always costs the full KillWait.
#   * JobRequeue=1 (batch jobs requeue-able by default, needed by submitit's Checkpointable),
#     ReturnToService=2 (a DOWN node comes back as soon as slurmd registers with a valid config),
#     SlurmctldTimeout=10 / SlurmdTimeout=30 (short, but not so short that a loaded 2-core box flaps).
#   * ProctrackType=proctrack/linuxproc, TaskPlugin=task/none, JobAcctGatherType=jobacct_gather/none,
#     cgroup.conf with IgnoreSystemd: no cgroups, no systemd -- works in containers/sandboxes.
#   * Several slurmd on one host (Slurm's "multiple slurmd" mode, built into Debian's slurmd): every node is
#     NodeName=nodeI NodeAddr=127.0.0.1 NodeHostname=`hostname -s` Port=6820+I, started with `slurmd -N nodeI`;
#     SlurmdSpoolDir, SlurmdLogFile and SlurmdPidFile contain %n (the node name), so the daemons never share
#     a spool (job scripts, credentials), log or pid file. Each node is described with the output of
#     `slurmd -C` (real CPU count and RealMemory; if we claimed more than the box has, slurmctld would drain
#     the node as "Low RealMemory"/"Low CPUs"): N nodes on a 2-core box advertise 2N CPUs in all, which is
#     what lets a 2-node x 2-task job run here; the cores are shared (see OverSubscribe below).
#   * Node names: SLURM_JOB_NODELIST and `scontrol show hostnames` give node names, and a multi-node job's
#     rendezvous address (MASTER_ADDR) is the first of them, so node1..nodeN must resolve. They resolve to
#     127.0.0.1 through one marked block at the end of /etc/hosts (replaced atomically by rename; rewritten
#     in place only where /etc/hosts is a mount point, as in Docker). The machine's own hostname keeps
#     whatever line it had; `start` checks afterwards that every node name resolves to 127.0.0.1 and stops
#     with an error if an earlier line (or DNS) maps one elsewhere.
#   * SelectType=select/cons_tres with CR_Core (memory is not consumable, so a job without --mem does not
#     block the whole node) and partition `debug` Default=YES MaxTime=INFINITE OverSubscribe=FORCE:4 so
#     that several small jobs (e.g. two 2-task test jobs on a 2-core box) run side by side instead of queueing
#     for each other. PreemptMode=OFF, so oversubscribed jobs simply share the cores (no gang scheduling).
#     LLN=YES (least loaded node) on the partition: a job goes to the node with the most idle CPUs, so the
#     tasks of a job array (and concurrent small jobs) spread over the nodes instead of filling node1 first.
#   * MaxJobCount=10000, MinJobAge=300, JobCompType=jobcomp/none, SlurmUser=root (no extra user/permissions),
#     MailProg=/bin/true (no mailer installed).
#   * All daemons talk over 127.0.0.1 (SlurmctldHost=<host>(127.0.0.1), NodeAddr, AccountingStorageHost,
#     MariaDB bind-address) and, when `hostname` resolves to a loopback address (the usual "127.0.1.1 host"
#     line in /etc/hosts), also LISTEN only there: CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
#     (slurmdbd: NoInAddrAny). Careful: those bind to what the HOSTNAME resolves to, not to NodeAddr/DbdAddr,
#     so on a box where the hostname resolves to e.g. 172.17.0.2 (Docker) they would break the cluster;
#     there we leave them out (daemons listen on all addresses, still munge-authenticated) and warn.
#     munged uses its default socket /run/munge/munge.socket.2 so every client finds it. The munge key is
#     created once (mungekey) if the package did not create one; munged is stopped by `stop` only if we
#     started it.
#   * FirstJobId: when slurmctld starts without saved state (state folder wiped) but the accounting DB
#     still has jobs, we continue after the highest job id in the DB (see continue_job_ids_after_db).
#   * Daemons are started with a clean environment, cwd=/, stdio to the log folder and our lock fd closed,
#     so a caller that captures our output (subprocess.run(..., capture_output=True)) never hangs on them.
#     A flock on /var/lib/pixelrnn-slurm/lock serialises concurrent start/stop calls.
#
# Gotchas (measured on Debian 12, slurm 22.05.8, submitit 1.5.4; see tests/slurm_cluster/)
#   * Reused job ids: when the controller state is wiped, ids restart at FirstJobId. With the DB kept,
#     sacct -j <id> then reports the OLD job (e.g. COMPLETED) until the new one is recorded, and submitit,
#     whose Job.done() first checks whether <folder>/<id>_0_result.pkl exists, returns the OLD job's result
#     instantly if its folder is reused (folder="logs/%j"). The FirstJobId logic above avoids this while the
#     DB survives; wiping the WHOLE /var/lib/pixelrnn-slurm restarts ids at 1 -- use fresh submitit folders.
#   * submitit's AutoExecutor picks SLURM whenever `srun` is on PATH (cluster=None); on this machine even a
#     "local" experiment becomes a SLURM job unless cluster="local"/"debug" is passed explicitly.
#   * submitit polls sacct (all its jobs at once) at 0, 2, 4, 8 ... s after the LAST submission: the interval
#     is half the time since then, capped at 600 s; a failing sacct is only a warning and leaves the state
#     UNKNOWN (= not done). Use job.done(force_check=True) / watcher.get_state(id, mode="force") in loops.
#   * A cancelled job shows up in sacct as "CANCELLED by 0" (not "CANCELLED") within ~0.1 s; job.result()
#     then still waits Job._results_timeout_s = 15 s for a result pickle (slow NFS guard) before raising
#     UncompletedJobError.
#   * `scontrol requeue` of a running submitit job: SIGTERM is ignored by submitit, SIGKILL after KillWait
#     (5 s), BeginTime = now + cred_expire + 1 (11 s): the second run starts ~16 s later with
#     SLURM_RESTART_COUNT=1. It restarts from the submitted pickle (checkpoint() is only called on USR2,
#     i.e. on timeout/preemption signals sent with --signal=USR2@slurm_signal_delay_s).
#   * kill -9 of slurmctld while a job runs loses the latest job state: on restart slurmctld relaunches the
#     job, slurmd reports "Duplicate jobid", the node is DRAINED and the job "launch failed requeued held".
#     `start` resumes the node; release the job with `scontrol release <id>`.
#   * A slurmd of a node that is not in slurm.conf (e.g. `slurmd -N vm` left by the earlier single-node
#     layout) that registers with slurmctld is taken for an alias of the first node with the same address:
#     "_find_node_record: lookup failure for node vm, alias node1", and node1 goes INVAL ("Low socket*core*
#     thread count"). `scontrol update state=resume` refuses INVAL; only a new registration of node1's own
#     slurmd clears it (to DRAIN, then resumable). `start` stops such strays before slurmctld restarts and
#     restarts the slurmd of a node it finds INVAL.
#   * The tasks of a 2-node job see SLURMD_NODENAME=node1/node2 and SLURM_NODEID=0/1; `hostname` is the
#     machine's in both. Every node advertises the machine's CPUs, so N nodes oversubscribe its cores N times.
#   * Harmless log noise: slurmd "mpi/pmix ... can not load PMIx library" (MpiDefault=none), slurmdbd
#     "Database settings not recommended values: innodb_buffer_pool_size" (wants GBs; 256M is plenty here).
set -euo pipefail

CLUSTER_NAME=pixelrnn
PARTITION=debug
STATE_DIR=${PIXELRNN_SLURM_STATE:-/var/lib/pixelrnn-slurm}
LOG_DIR=${PIXELRNN_SLURM_LOGS:-/var/log/pixelrnn-slurm}
DB_PORT=${PIXELRNN_SLURM_DB_PORT:-13306}
START_TIMEOUT=${PIXELRNN_SLURM_START_TIMEOUT:-60}
SLURMD_PORT_BASE=${PIXELRNN_SLURM_SLURMD_PORT:-6820}
MAX_NODES=16
CONF_DIR=/etc/slurm
SLURM_CONF_FILE=$CONF_DIR/slurm.conf
SLURMDBD_CONF_FILE=$CONF_DIR/slurmdbd.conf
CGROUP_CONF_FILE=$CONF_DIR/cgroup.conf
RUN_DIR=$STATE_DIR/run
CTLD_STATE=$STATE_DIR/slurmctld
SLURMD_SPOOL=$STATE_DIR/slurmd
DB_DIR=$STATE_DIR/mariadb
DB_SOCK=$DB_DIR/mariadb.sock
DB_PID=$DB_DIR/mariadb.pid
DB_PASS_FILE=$STATE_DIR/slurmdbd.dbpass
FIRST_JOB_ID_FILE=$STATE_DIR/first_job_id
MUNGE_KEY=/etc/munge/munge.key
MUNGE_OURS=$RUN_DIR/munged.ours
# MARKER, HOSTS_BEGIN/HOSTS_END and the "Why these settings" line of slurm.conf name this script's former
# path (slurm/) on purpose: they are the marks by which `start`/`stop` recognise the files of a running
# cluster (check_conf_ownership, configured_nodes, hosts_without_block). Renaming them would make a `start`
# refuse that cluster's slurm.conf as foreign, leave a second block in /etc/hosts and, through the changed
# config text, restart every daemon.
MARKER="# Managed by pixelrnn slurm/local-cluster.sh -- regenerated on every start, edits are overwritten."
HOSTS_FILE=/etc/hosts
HOSTS_BEGIN="# BEGIN pixelrnn slurm/local-cluster.sh: the local cluster's node names (regenerated by start, removed by stop)"
HOSTS_END="# END pixelrnn slurm/local-cluster.sh"
NODES=0  # node count: set by `start --nodes N`, else the configured one (configured_nodes)
APT_PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)

export SLURM_CONF=$SLURM_CONF_FILE
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
# Clean environment for the daemons (they must not inherit pytest/CI/venv variables).
DAEMON_ENV=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 SLURM_CONF="$SLURM_CONF_FILE")

log() { printf '[local-cluster] %s\n' "$*" >&2; }
die() {
    log "ERROR: $1"
    shift || true
    local f
    for f in "$@"; do
        if [[ -f $f ]]; then
            printf -- '----- last 30 lines of %s -----\n' "$f" >&2
            tail -n 30 "$f" >&2 || true
        fi
    done
    exit 1
}

# ---------------------------------------------------------------------------------------------- helpers
# The controller's host name (what slurmctld compares SlurmctldHost with); the nodes are node1..nodeN.
ctld_host() { hostname -s; }
node_names() {
    local i
    for ((i = 1; i <= NODES; i++)); do echo "node$i"; done
}
node_port() { echo $((SLURMD_PORT_BASE + ${1#node})); }
node_list() { node_names | paste -sd, -; }  # node1,node2,...: a hostlist Slurm accepts

# Nodes in our managed slurm.conf (0 if there is none, or it is this script's earlier single-node layout).
configured_nodes() {
    [[ -f $SLURM_CONF_FILE ]] && grep -qF "$MARKER" "$SLURM_CONF_FILE" || { echo 0; return; }
    grep -cE '^NodeName=node[0-9]+ ' "$SLURM_CONF_FILE" || true
}

# pid from a pid file, if that process is alive and really is $1
pid_from_file() {
    local name=$1 file=$2 pid
    [[ -s $file ]] || return 1
    pid=$(tr -dc '0-9' <"$file")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]] || return 1
    echo "$pid"
}

# pid of a slurm daemon: pid file first, then any process with that exact name
# (the only slurm.conf on this box is ours, so any slurmctld is ours)
slurm_daemon_pid() {
    local name=$1
    pid_from_file "$name" "$RUN_DIR/$name.pid" || pgrep -o -x "$name" || return 1
}

# wait_until <seconds> <command...>: poll every 0.25 s
wait_until() {
    local timeout=$1
    shift
    local deadline=$((SECONDS + timeout))
    while ! "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.25
    done
}

tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# run a daemon detached: clean env, cwd /, stdio to a log file, our lock fd closed
# spawn <logfile> <cmd...>: for self-daemonizing programs (slurm*, munged): waits until the
# foreground process has forked off the daemon, so that its pid file / process exists afterwards
spawn() {
    local out=$1
    shift
    (cd / && exec setsid -w "${DAEMON_ENV[@]}" "$@" </dev/null >>"$out" 2>&1 9>&-) || true
}

# spawn_bg <logfile> <cmd...>: for programs that stay in the foreground (mariadbd)
spawn_bg() {
    local out=$1
    shift
    (cd / && exec setsid "${DAEMON_ENV[@]}" "$@" </dev/null >>"$out" 2>&1 9>&-) &
}

# stop_pid <name> <pid> [timeout]: SIGTERM, wait, then SIGKILL
stop_pid() {
    local name=$1 pid=$2 timeout=${3:-20} i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < timeout * 4; i++)); do
        kill -0 "$pid" 2>/dev/null || { log "stopped $name (pid $pid)"; return 0; }
        sleep 0.25
    done
    log "$name (pid $pid) did not stop after ${timeout}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

stop_slurm_daemon() {
    local name=$1 pid
    while pid=$(slurm_daemon_pid "$name"); do
        stop_pid "$name" "$pid" 20
        sleep 0.2
    done
    rm -f "$RUN_DIR/$name.pid"
}

# write_if_changed <file> <mode> <content>: returns 0 if the file was (re)written
write_if_changed() {
    local file=$1 mode=$2 content=$3
    if [[ -f $file ]] && [[ "$(cat "$file")" == "$content" ]]; then
        chmod "$mode" "$file"
        return 1
    fi
    local tmp
    tmp=$(mktemp "$file.XXXXXX")
    printf '%s\n' "$content" >"$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$file"
    return 0
}

# ---------------------------------------------------------------------------------------------- install
missing_tools() {
    local t missing=()
    for t in slurmctld slurmd slurmdbd sbatch sacct sacctmgr scontrol sinfo munged munge unmunge \
        mariadbd mariadb mariadb-admin mariadb-install-db; do
        command -v "$t" >/dev/null 2>&1 || missing+=("$t")
    done
    # the slurmdbd -> MySQL plugin is a separate package in Debian
    ls /usr/lib/*/slurm-wlm/accounting_storage_mysql.so >/dev/null 2>&1 || missing+=(accounting_storage_mysql.so)
    echo "${missing[*]}"
}

ensure_packages() {
    local missing
    missing=$(missing_tools)
    [[ -z $missing ]] && return 0
    log "missing: $missing -> apt-get install ${APT_PACKAGES[*]}"
    command -v apt-get >/dev/null || die "apt-get not found; install ${APT_PACKAGES[*]} by hand"
    # Do not let the packages' init scripts start system daemons with the stock config.
    local own_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    local rc=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get -qq -o DPkg::Lock::Timeout=600 update &&
            DEBIAN_FRONTEND=noninteractive apt-get -qq -y -o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0 \
                -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
                install --no-install-recommends "${APT_PACKAGES[@]}" >"$LOG_DIR/apt-install.log" 2>&1
    } || rc=$?
    ((own_policy)) && rm -f /usr/sbin/policy-rc.d
    ((rc == 0)) || die "apt-get install failed (rc=$rc)" "$LOG_DIR/apt-install.log"
    missing=$(missing_tools)
    [[ -z $missing ]] || die "still missing after apt-get install: $missing"
}

# ---------------------------------------------------------------------------------------------- config
check_conf_ownership() {
    if [[ -f $SLURM_CONF_FILE ]] && ! grep -qF "$MARKER" "$SLURM_CONF_FILE" && [[ ${PIXELRNN_SLURM_FORCE:-0} != 1 ]]; then
        die "$SLURM_CONF_FILE exists and was not written by this script; refusing to overwrite it (move it away, or rerun with PIXELRNN_SLURM_FORCE=1)"
    fi
}

# NoCtldInAddrAny/NoInAddrAny make every daemon (and srun) bind to the first IPv4 address that the
# *hostname* resolves to -- not to NodeAddr/DbdAddr. Only safe when that address is loopback (typical:
# "127.0.1.1 host" in /etc/hosts). Otherwise (Docker: hostname -> 172.17.x.y) the daemons would bind an
# address on which nobody contacts them, so we keep Slurm's default (listen on all addresses).
hostname_addr() { getent ahostsv4 "$(hostname)" 2>/dev/null | awk 'NR == 1 { print $1 }'; }
comm_params_line() {
    local addr
    addr=$(hostname_addr)
    if [[ $addr == 127.* ]]; then
        echo "CommunicationParameters=$1"
    else
        echo "# CommunicationParameters unset: hostname $(hostname) resolves to '${addr:-nothing}', not loopback -> listen on all addresses"
    fi
}

# One line per node: nodeI's slurmd listens on its own port; all of them run on this host.
render_node_lines() {
    local host=$1 hw=$2 node
    for node in $(node_names); do
        echo "NodeName=$node NodeAddr=127.0.0.1 NodeHostname=$host Port=$(node_port "$node") $hw State=UNKNOWN"
    done
}

render_slurm_conf() {
    local host=$1 hw=$2
    cat <<EOF
$MARKER
# Why these settings: see the comment block at the top of slurm/local-cluster.sh
ClusterName=$CLUSTER_NAME
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
$(comm_params_line NoCtldInAddrAny,NoInAddrAny)
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
PreemptType=preempt/none
PreemptMode=OFF
JobRequeue=1
ReturnToService=2
SlurmctldTimeout=10
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
MaxJobCount=10000
FirstJobId=$(first_job_id)
Waittime=0
MailProg=/bin/true
StateSaveLocation=$CTLD_STATE
SlurmdSpoolDir=$SLURMD_SPOOL/%n
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd-%n.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
$(render_node_lines "$host" "$hw")
PartitionName=$PARTITION Nodes=$(node_list) Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4 LLN=YES
EOF
}

render_slurmdbd_conf() {
    local host=$1 pass=$2
    cat <<EOF
$MARKER
AuthType=auth/munge
DbdAddr=127.0.0.1
DbdHost=$host
DbdPort=6819
$(comm_params_line NoInAddrAny)
SlurmUser=root
DebugLevel=info
LogFile=$LOG_DIR/slurmdbd.log
PidFile=$RUN_DIR/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$pass
StorageLoc=slurm_acct_db
EOF
}

render_cgroup_conf() {
    cat <<EOF
$MARKER
# No cgroups are used (proctrack/linuxproc, task/none); this only keeps slurmd from probing systemd.
CgroupPlugin=autodetect
IgnoreSystemd=yes
EOF
}

first_job_id() { cat "$FIRST_JOB_ID_FILE" 2>/dev/null || echo 1; }

# Job ids restart at FirstJobId whenever slurmctld starts without saved state. If the accounting DB
# still knows older jobs, continue after the highest id: a reused id makes sacct report the OLD job's
# state and makes submitit pick up an old <id>_0_result.pkl from a reused folder.
continue_job_ids_after_db() {
    [[ -e $CTLD_STATE/job_state || -e $CTLD_STATE/job_state.old ]] && return 0
    slurm_daemon_pid slurmctld >/dev/null && return 0
    local max
    max=$(sql -e "SELECT COALESCE(MAX(id_job), 0) FROM slurm_acct_db.\`${CLUSTER_NAME}_job_table\`" 2>/dev/null) || max=0
    [[ $max =~ ^[0-9]+$ ]] || max=0
    if [[ "$((max + 1))" != "$(first_job_id)" ]]; then
        echo "$((max + 1))" >"$FIRST_JOB_ID_FILE"
        ((max > 0)) && log "fresh controller state but the accounting DB has jobs up to $max: FirstJobId=$((max + 1))"
        write_configs
    fi
}

SLURM_CONF_CHANGED=0
SLURMDBD_CONF_CHANGED=0
write_configs() {
    local host hw pass
    host=$(ctld_host)
    # "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
    hw=$(slurmd -C 2>/dev/null | sed -n 's/^NodeName=[^ ]* //p' | head -n1)
    [[ $hw == *CPUs=* && $hw == *RealMemory=* ]] || die "could not read the node hardware with 'slurmd -C'"
    if [[ $(hostname_addr) != 127.* && ! -v HOSTNAME_WARNED ]]; then
        HOSTNAME_WARNED=1
        log "warning: hostname $(hostname) does not resolve to a loopback address: the slurm daemons listen on all" \
            "addresses (munge-authenticated). Add '127.0.1.1 $(hostname)' to /etc/hosts to keep them on loopback."
    fi
    if [[ ! -s $DB_PASS_FILE ]]; then
        (umask 077 && head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$DB_PASS_FILE")
    fi
    pass=$(<"$DB_PASS_FILE")
    mkdir -p "$CONF_DIR"
    if write_if_changed "$SLURM_CONF_FILE" 644 "$(render_slurm_conf "$host" "$hw")"; then SLURM_CONF_CHANGED=1; fi
    if write_if_changed "$CGROUP_CONF_FILE" 644 "$(render_cgroup_conf)"; then SLURM_CONF_CHANGED=1; fi
    if write_if_changed "$SLURMDBD_CONF_FILE" 600 "$(render_slurmdbd_conf "$host" "$pass")"; then SLURMDBD_CONF_CHANGED=1; fi
    chown root:root "$SLURMDBD_CONF_FILE"
}

make_dirs() {
    install -d -m 755 "$STATE_DIR" "$LOG_DIR" "$RUN_DIR" "$CTLD_STATE" "$SLURMD_SPOOL"
}

# ---------------------------------------------------------------------------------------------- node names
# /etc/hosts without our block: every other line exactly as it is
hosts_without_block() {
    awk -v b="$HOSTS_BEGIN" -v e="$HOSTS_END" '$0 == b { skip = 1; next } $0 == e { skip = 0; next } !skip' "$HOSTS_FILE"
}

# write_hosts <content>: replace /etc/hosts atomically (a rename in /etc) with the same owner and mode;
# where /etc/hosts is a mount point (Docker bind-mounts it) a rename is refused: rewrite it in place.
write_hosts() {
    local content=$1 tmp
    [[ "$(cat "$HOSTS_FILE")" == "$content" ]] && return 0
    tmp=$(mktemp "$HOSTS_FILE.pixelrnn.XXXXXX")
    printf '%s\n' "$content" >"$tmp"
    chmod --reference="$HOSTS_FILE" "$tmp"
    chown --reference="$HOSTS_FILE" "$tmp"
    if ! mv -f "$tmp" "$HOSTS_FILE" 2>/dev/null; then
        log "$HOSTS_FILE cannot be replaced by a rename (a mount point?): rewriting it in place"
        cat "$tmp" >"$HOSTS_FILE"
        rm -f "$tmp"
    fi
}

# The node names resolve to 127.0.0.1 (the first address an earlier line or DNS gives wins: check it).
ensure_node_names() {
    local others block node addr
    others=$(hosts_without_block)
    block="$HOSTS_BEGIN"$'\n'"127.0.0.1 $(node_names | paste -sd' ' -)"$'\n'"$HOSTS_END"
    write_hosts "${others:+$others$'\n'}$block"
    for node in $(node_names); do
        addr=$(getent ahostsv4 "$node" 2>/dev/null | awk 'NR == 1 { print $1 }')
        [[ $addr == 127.0.0.1 ]] || die "node name $node resolves to '${addr:-nothing}', not 127.0.0.1: another line of $HOSTS_FILE (or DNS) names it; remove that line"
    done
}

remove_node_names() {
    grep -qxF "$HOSTS_BEGIN" "$HOSTS_FILE" 2>/dev/null || return 0
    write_hosts "$(hosts_without_block)"
    log "removed the node names from $HOSTS_FILE"
}

# ---------------------------------------------------------------------------------------------- munge
munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if [[ ! -s $MUNGE_KEY ]]; then
        log "creating munge key $MUNGE_KEY"
        install -d -o munge -g munge -m 700 /etc/munge
        mungekey --create --keyfile="$MUNGE_KEY" 2>/dev/null ||
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
        chown munge:munge "$MUNGE_KEY"
        chmod 400 "$MUNGE_KEY"
    fi
    munge_works && return 0
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/lib/munge
    install -d -o munge -g munge -m 700 /var/log/munge
    # a stale socket/pid from a killed munged makes the new one refuse to start
    if ! pgrep -x munged >/dev/null; then rm -f /run/munge/munged.pid /run/munge/munge.socket.2*; fi
    log "starting munged"
    spawn "$LOG_DIR/munged.stdout" runuser -u munge -- /usr/sbin/munged
    wait_until 15 munge_works || die "munged did not come up" /var/log/munge/munged.log "$LOG_DIR/munged.stdout"
    cat /run/munge/munged.pid >"$MUNGE_OURS" 2>/dev/null || pgrep -o -x munged >"$MUNGE_OURS" || true
}

stop_munge() {
    [[ -s $MUNGE_OURS ]] || return 0
    local pid
    pid=$(pid_from_file munged "$MUNGE_OURS") && stop_pid munged "$pid" 10
    rm -f "$MUNGE_OURS"
}

# ---------------------------------------------------------------------------------------------- mariadb
sql() { mariadb --no-defaults --socket="$DB_SOCK" -uroot --batch --skip-column-names "$@"; }
db_alive() { mariadb-admin --no-defaults --socket="$DB_SOCK" -uroot --connect-timeout=2 ping; }

start_mariadb() {
    if [[ ! -d $DB_DIR/mysql ]]; then
        log "initialising MariaDB datadir $DB_DIR"
        rm -rf "$DB_DIR"
        install -d -o mysql -g mysql -m 750 "$DB_DIR"
        mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DIR" \
            --auth-root-authentication-method=socket --skip-test-db >"$LOG_DIR/mariadb-install.log" 2>&1 ||
            die "mariadb-install-db failed" "$LOG_DIR/mariadb-install.log"
    fi
    if ! pid_from_file mariadbd "$DB_PID" >/dev/null; then
        rm -f "$DB_SOCK" "$DB_SOCK.lock" "$DB_PID"
        touch "$LOG_DIR/mariadb.log"
        chown mysql:mysql "$LOG_DIR/mariadb.log"
        log "starting mariadbd (127.0.0.1:$DB_PORT)"
        spawn_bg "$LOG_DIR/mariadb.stdout" mariadbd --no-defaults --user=mysql --datadir="$DB_DIR" \
            --socket="$DB_SOCK" --pid-file="$DB_PID" --port="$DB_PORT" --bind-address=127.0.0.1 \
            --skip-name-resolve --log-error="$LOG_DIR/mariadb.log" --skip-log-bin \
            --innodb-buffer-pool-size=256M --innodb-log-file-size=64M --innodb-lock-wait-timeout=900 \
            --innodb-flush-log-at-trx-commit=2 --max-connections=100
    fi
    wait_until 60 db_alive || die "MariaDB did not come up" "$LOG_DIR/mariadb.log" "$LOG_DIR/mariadb.stdout"
    local pass
    pass=$(<"$DB_PASS_FILE")
    sql <<EOF || die "could not create slurm_acct_db / user slurm" "$LOG_DIR/mariadb.log"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pass';
GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

stop_mariadb() {
    local pid
    pid=$(pid_from_file mariadbd "$DB_PID") || return 0
    stop_pid mariadbd "$pid" 60
}

# ---------------------------------------------------------------------------------------------- slurm
dbd_alive() { tcp_open 127.0.0.1 6819 && sacctmgr -n -P list cluster format=cluster; }

start_slurmdbd() {
    if ((SLURMDBD_CONF_CHANGED)) && slurm_daemon_pid slurmdbd >/dev/null; then
        log "slurmdbd.conf changed: restarting slurmdbd"
        stop_slurm_daemon slurmdbd
    fi
    if ! slurm_daemon_pid slurmdbd >/dev/null; then
        log "starting slurmdbd"
        spawn "$LOG_DIR/slurmdbd.stdout" slurmdbd
    fi
    # the first start creates the tables (a few seconds)
    wait_until 60 dbd_alive || die "slurmdbd did not come up" "$LOG_DIR/slurmdbd.log" "$LOG_DIR/slurmdbd.stdout"
    # register cluster (creates the root account + root user association) -- idempotent
    if ! sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
        log "registering cluster $CLUSTER_NAME in slurmdbd"
        sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null || die "sacctmgr add cluster failed" "$LOG_DIR/slurmdbd.log"
    fi
    if [[ -z $(sacctmgr -n -P list assoc cluster="$CLUSTER_NAME" user=root format=user 2>/dev/null) ]]; then
        log "adding user root to account root"
        sacctmgr -i add user root account=root cluster="$CLUSTER_NAME" >/dev/null ||
            die "sacctmgr add user root failed" "$LOG_DIR/slurmdbd.log"
    fi
}

ctld_alive() { scontrol ping 2>/dev/null | grep -q 'is UP'; }

start_slurmctld() {
    if ((SLURM_CONF_CHANGED)) && slurm_daemon_pid slurmctld >/dev/null; then
        log "slurm.conf changed: restarting slurmctld"
        stop_slurm_daemon slurmctld
    fi
    if ! slurm_daemon_pid slurmctld >/dev/null; then
        log "starting slurmctld"
        spawn "$LOG_DIR/slurmctld.stdout" slurmctld
    fi
    wait_until 30 ctld_alive || die "slurmctld did not answer 'scontrol ping'" "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmctld.stdout"
}

# The node a running slurmd serves: the argument of its -N ("" for a slurmd started without one).
slurmd_node_of() {
    local -a argv
    local i
    mapfile -d '' -t argv <"/proc/$1/cmdline" 2>/dev/null || return 0
    for ((i = 0; i + 1 < ${#argv[@]}; i++)); do
        [[ ${argv[i]} == -N ]] && { echo "${argv[i + 1]}"; return 0; }
    done
}

# pid of node $1's slurmd: its pid file, else a slurmd process started with "-N $1"
slurmd_pid() {
    local node=$1 pid
    pid_from_file slurmd "$RUN_DIR/slurmd-$node.pid" && return 0
    for pid in $(pgrep -x slurmd); do
        [[ "$(slurmd_node_of "$pid")" == "$node" ]] && { echo "$pid"; return 0; }
    done
    return 1
}

stop_slurmd() {
    local node=$1 pid
    while pid=$(slurmd_pid "$node"); do
        stop_pid "slurmd $node" "$pid" 20
        sleep 0.2
    done
    rm -f "$RUN_DIR/slurmd-$node.pid"
}

# slurmd daemons of nodes that are not configured (any more): a smaller --nodes, or the single
# `hostname -s` node of this script's earlier layout (a slurmd with another -N, or none). A slurmd forks
# short-lived helpers (their parent is a slurmd, their cmdline may already be gone): those are no daemons.
stray_slurmd_pids() {
    local pid node ppid
    for pid in $(pgrep -x slurmd); do
        ppid=$(ps -o ppid= -p "$pid" 2>/dev/null | tr -d ' ') || continue
        [[ -n $ppid && "$(cat "/proc/$ppid/comm" 2>/dev/null)" != slurmd ]] || continue
        [[ -n "$(tr -d '\0' <"/proc/$pid/cmdline" 2>/dev/null)" ]] || continue  # exiting
        node=$(slurmd_node_of "$pid")
        [[ -n $node ]] && node_names | grep -qxF "$node" || echo "$pid"
    done
}

stop_stray_slurmds() {
    local pid
    for pid in $(stray_slurmd_pids); do
        stop_pid "slurmd $(slurmd_node_of "$pid") (not configured)" "$pid" 20
    done
    # the earlier single-node layout's pid file and spool (the per-node spools are folders below it)
    rm -f "$RUN_DIR/slurmd.pid"
    find "$SLURMD_SPOOL" -maxdepth 1 -type f -delete
}

start_slurmd() {
    install -d -m 755 "$SLURMD_SPOOL/$1"
    log "starting slurmd $1 (port $(node_port "$1"))"
    spawn "$LOG_DIR/slurmd-$1.stdout" slurmd -N "$1"
}

start_slurmds() {
    local node
    for node in $(node_names); do
        if ((SLURM_CONF_CHANGED)) && slurmd_pid "$node" >/dev/null; then
            log "slurm.conf changed: restarting slurmd $node"
            stop_slurmd "$node"
        fi
        slurmd_pid "$node" >/dev/null || start_slurmd "$node"
    done
}

node_state() { sinfo -h -N -n "$1" -o %T 2>/dev/null | head -n1; }
node_reason() { sinfo -h -N -n "$1" -o %E 2>/dev/null | head -n1; }
node_usable() { [[ $(node_state "$1") =~ ^(idle|mixed|allocated|completing)$ ]]; }
all_nodes_usable() {
    local node
    for node in $(node_names); do node_usable "$node" || return 1; done
}

wait_for_nodes() {
    local node deadline=$((SECONDS + START_TIMEOUT)) state waiting
    local -A last_resume=() last_restart=()
    while true; do
        waiting=()
        for node in $(node_names); do
            state=$(node_state "$node")
            [[ $state =~ ^(idle|mixed|allocated|completing)$ ]] && continue
            waiting+=("$node=${state:-unknown}")
            # a node left DOWN/DRAIN by an earlier run: resume it once slurmd answers (no '*' = responding)
            if [[ $state =~ ^(down|drain|drained|draining|fail|failing)$ ]] && ((SECONDS - ${last_resume[$node]:--100} >= 5)); then
                log "node $node is $state (reason: $(node_reason "$node")); resuming it"
                scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
                last_resume[$node]=$SECONDS
            fi
            # INVAL: a registration with the wrong hardware reached this node (e.g. an old slurmd of another
            # name, seen as this node's alias); only a new registration clears it (then DRAIN, resumed above)
            if [[ $state == inval ]] && ((SECONDS - ${last_restart[$node]:--100} >= 10)); then
                log "node $node is inval (reason: $(node_reason "$node")); restarting its slurmd"
                stop_slurmd "$node"
                start_slurmd "$node"
                last_restart[$node]=$SECONDS
            fi
            # (a slurmd restarted just now may still be daemonizing: no pid file, the parent gone, for a moment)
            if ((SECONDS - ${last_restart[$node]:--100} >= 5)) && ! slurmd_pid "$node" >/dev/null &&
                ! { sleep 1; slurmd_pid "$node" >/dev/null; }; then
                die "slurmd $node is not running (node state: ${state:-unknown})" "$LOG_DIR/slurmd-$node.log" \
                    "$LOG_DIR/slurmd-$node.stdout"
            fi
        done
        ((${#waiting[@]} == 0)) && return 0
        if ((SECONDS >= deadline)); then
            sinfo -N -l >&2 || true
            node=${waiting[0]%%=*}
            die "not every node is idle after ${START_TIMEOUT}s (${waiting[*]}; $node: $(node_reason "$node"))" \
                "$LOG_DIR/slurmd-$node.log" "$LOG_DIR/slurmctld.log"
        fi
        sleep 0.5
    done
}

nodes_summary() { sinfo -h -N -p "$PARTITION" -o '%N %T' 2>/dev/null | paste -sd, - | sed 's/,/, /g'; }

# ---------------------------------------------------------------------------------------------- commands
all_running() {
    local node
    munge_works && pid_from_file mariadbd "$DB_PID" >/dev/null &&
        slurm_daemon_pid slurmdbd >/dev/null && slurm_daemon_pid slurmctld >/dev/null || return 1
    for node in $(node_names); do slurmd_pid "$node" >/dev/null || return 1; done
    [[ -z $(stray_slurmd_pids) ]]
}

take_lock() {
    exec 9>"$STATE_DIR/lock"
    flock -w 600 9 || die "could not get $STATE_DIR/lock (another local-cluster.sh running?)"
}

cmd_start() {
    local t0=$SECONDS
    make_dirs
    take_lock
    ((NODES > 0)) || NODES=$(configured_nodes)
    ((NODES > 0)) || NODES=1
    ensure_packages
    check_conf_ownership
    ensure_node_names
    write_configs
    if ((!SLURM_CONF_CHANGED && !SLURMDBD_CONF_CHANGED)) && all_running && ctld_alive && all_nodes_usable; then
        log "already running; $NODES node(s): $(nodes_summary)"
        return 0
    fi
    start_munge
    start_mariadb
    start_slurmdbd
    continue_job_ids_after_db
    # before slurmctld (re)starts: a slurmd of an unconfigured node registering with the new slurmctld is
    # taken for an alias of a configured node and leaves that node INVAL
    stop_stray_slurmds
    start_slurmctld
    start_slurmds
    wait_for_nodes
    log "cluster $CLUSTER_NAME up in $((SECONDS - t0))s: $NODES node(s) in partition $PARTITION: $(nodes_summary)"
}

cmd_stop() {
    local pid
    make_dirs
    take_lock
    for pid in $(pgrep -x slurmd); do stop_pid "slurmd $(slurmd_node_of "$pid")" "$pid" 20; done
    rm -f "$RUN_DIR"/slurmd*.pid
    stop_slurm_daemon slurmctld
    stop_slurm_daemon slurmdbd
    stop_mariadb
    stop_munge
    remove_node_names
    if pgrep -x slurmstepd >/dev/null; then
        log "note: job steps (slurmstepd) are still running; they are re-attached on the next start"
    fi
    log "stopped"
}

cmd_status() {
    local rc=0 name pid node
    NODES=$(configured_nodes)
    for name in slurmctld slurmdbd; do
        if pid=$(slurm_daemon_pid "$name"); then echo "$name: running (pid $pid)"; else echo "$name: NOT running"; rc=1; fi
    done
    for node in $(node_names); do
        if pid=$(slurmd_pid "$node"); then echo "slurmd $node: running (pid $pid, port $(node_port "$node"))"; else echo "slurmd $node: NOT running"; rc=1; fi
    done
    for pid in $(stray_slurmd_pids); do echo "slurmd pid $pid: serves '$(slurmd_node_of "$pid")', which is not configured"; rc=1; done
    if pid=$(pid_from_file mariadbd "$DB_PID"); then echo "mariadbd: running (pid $pid, 127.0.0.1:$DB_PORT)"; else echo "mariadbd: NOT running"; rc=1; fi
    if munge_works; then echo "munge: ok"; else echo "munge: NOT working"; rc=1; fi
    echo "--- scontrol ping"
    scontrol ping 2>&1 || true
    ctld_alive || rc=1
    echo "--- sinfo -N ($NODES node(s) configured)"
    sinfo -N 2>&1 || true
    ((NODES > 0)) || { echo "no cluster configured by this script: run start"; rc=1; }
    for node in $(node_names); do
        if ! node_usable "$node"; then
            echo "node $node is not usable: state=$(node_state "$node") reason=$(node_reason "$node")"
            rc=1
        fi
        if [[ "$(getent ahostsv4 "$node" 2>/dev/null | awk 'NR == 1 { print $1 }')" != 127.0.0.1 ]]; then
            echo "node name $node does not resolve to 127.0.0.1 ($HOSTS_FILE block missing?)"
            rc=1
        fi
    done
    return $rc
}

usage() {
    echo "usage: $0 start [--nodes N] | stop | status   (N: 1..$MAX_NODES; default: the configured count, else 1)" >&2
    exit 2
}

main() {
    local cmd=${1:-}
    [[ $cmd =~ ^(start|stop|status)$ ]] || usage
    shift
    while (($#)); do
        case "$cmd:$1" in
        start:--nodes) NODES=${2:-}; shift 2 || usage ;;
        start:--nodes=*) NODES=${1#--nodes=}; shift ;;
        *) usage ;;
        esac
        [[ $NODES =~ ^[0-9]+$ ]] && ((NODES >= 1 && NODES <= MAX_NODES)) || usage
    done
    if [[ $cmd != status && $EUID -ne 0 ]]; then
        die "must run as root (it installs packages and runs the daemons as root)"
    fi
    "cmd_$cmd"
}

main "$@"
