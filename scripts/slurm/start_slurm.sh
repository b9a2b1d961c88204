#!/usr/bin/env bash
# Start a throw-away one-node Slurm cluster on this machine (Debian's slurmctld, slurmd,
# munge; as root, without systemd or cgroups), for the platform's Slurm tests and for trying
# FATEBIAS_EXECUTOR=dask with a `slurm:` cluster. Stop it with stop_slurm.sh.
#
#   sudo scripts/slurm/start_slurm.sh          # installs the packages when missing (~12 s)
#
# The cluster: node = this machine (NodeAddr 127.0.0.1), partitions `debug` (default, up)
# and `down` (State=DOWN: jobs queue there forever with reason PartitionDown, which the
# tests use), one generic resource `gpu` counted on the node without a device so that jobs
# with --gres=gpu:1 are scheduled on a machine without a GPU.
# Files: $FATEBIAS_SLURM_DIR (default ${TMPDIR:-/tmp}/fatebias-slurm): log/, run/ (pid
# files), spool/; /etc/slurm/slurm.conf and gres.conf (the default path: the Slurm commands
# need no SLURM_CONF).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
BASE=${FATEBIAS_SLURM_DIR:-${TMPDIR:-/tmp}/fatebias-slurm}
NODE=$(hostname -s)
CPUS=$(nproc)
MEM=$(awk '/^MemTotal:/ {printf "%d", $2/1024*0.9}' /proc/meminfo)  # below what slurmd sees
t0=$(date +%s)

if [ "$(id -u)" != 0 ]; then echo "start_slurm.sh: run as root" >&2; exit 1; fi
need=0
for c in slurmctld slurmd sbatch munged; do command -v "$c" >/dev/null || need=1; done
if [ "$need" = 1 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 \
    slurmctld slurmd slurm-client munge
fi
mkdir -p "$BASE"/{log,run,spool/ctld,spool/d}

# munge: Debian's postinst makes the key, but nothing starts munged without an init system.
[ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge; mungekey --create --keyfile=/etc/munge/munge.key --force; }
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge
chmod 600 /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged          # pid file: /run/munge/munged.pid
  touch "$BASE/run/munged.started"              # stop_slurm.sh stops only a munged started here
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi
munge -n | unmunge >/dev/null

mkdir -p /etc/slurm
cat > /etc/slurm/gres.conf <<CONF
NodeName=${NODE} Name=gpu File=/dev/null
CONF
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=fatebiasci
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
ReturnToService=2
KillWait=5
MinJobAge=600
StateSaveLocation=${BASE}/spool/ctld
SlurmdSpoolDir=${BASE}/spool/d
SlurmctldPidFile=${BASE}/run/slurmctld.pid
SlurmdPidFile=${BASE}/run/slurmd.pid
SlurmctldLogFile=${BASE}/log/slurmctld.log
SlurmdLogFile=${BASE}/log/slurmd.log
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM} Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP
PartitionName=down Nodes=${NODE} MaxTime=INFINITE State=DOWN
CONF

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if alive "$BASE/run/slurmctld.pid"; then scontrol reconfigure; else slurmctld -c; fi  # -c: clean state
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
alive "$BASE/run/slurmd.pid" || slurmd

state=
for _ in $(seq 150); do
  state=$(sinfo -h -N -n "$NODE" -p debug -o %T 2>/dev/null | head -1 || true)
  case "$state" in
    idle*) break ;;
    down*|drain*) scontrol update NodeName="$NODE" State=RESUME || true ;;
  esac
  sleep 0.2
done
if [[ "$state" != idle* ]]; then
  echo "node $NODE not idle ('$state')" >&2
  tail -n 20 "$BASE"/log/*.log >&2
  exit 1
fi
echo "Slurm up on $NODE (CPUs=$CPUS RealMemory=${MEM}M, gres gpu:1) in $(( $(date +%s) - t0 ))s; files in $BASE"
