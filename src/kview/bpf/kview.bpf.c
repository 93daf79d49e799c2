// SPDX-License-Identifier: GPL-2.0-only OR MIT
//
// The kernel's view of who is in which namespaces, for nsproxyfs.
//
// `dump_tasks` is a task iterator (iter/task): reading its file yields one
// `struct record` per thread-group leader visible in the reader's pid
// namespace, with the namespaces that reader's /proc/PID/ns links would
// name. The other programs count changes, so that a pass can be reused
// for as long as nothing it depends on has changed.
//
// Built by build.sh in this directory (clang, BPF target, CO-RE); the
// object is checked in next to this file and loaded by the daemon with a
// pure-Rust loader. No kernel headers: the few kernel types used are
// declared below with only the fields read, and every access to them is
// relocated against the running kernel's BTF when the object is loaded.

typedef unsigned int __u32;
typedef unsigned long long __u64;

#define CORE __attribute__((preserve_access_index))
#define SEC(name) __attribute__((section(name), used))

// Kernel types (only the fields read; offsets come from the kernel's BTF).
struct ns_common {
	unsigned int inum;
} CORE;
struct uts_namespace { struct ns_common ns; } CORE;
struct ipc_namespace { struct ns_common ns; } CORE;
struct mnt_namespace { struct ns_common ns; } CORE;
struct net { struct ns_common ns; } CORE;
struct cgroup_namespace { struct ns_common ns; } CORE;
struct time_namespace { struct ns_common ns; } CORE;
struct user_namespace { struct ns_common ns; } CORE;
struct task_struct;
struct pid_namespace {
	struct ns_common ns;
	struct task_struct *child_reaper;
} CORE;
struct nsproxy {
	struct uts_namespace *uts_ns;
	struct ipc_namespace *ipc_ns;
	struct mnt_namespace *mnt_ns;
	struct pid_namespace *pid_ns_for_children;
	struct net *net_ns;
	struct time_namespace *time_ns;
	struct time_namespace *time_ns_for_children;
	struct cgroup_namespace *cgroup_ns;
} CORE;
struct cred {
	struct user_namespace *user_ns;
} CORE;
struct upid {
	int nr;
	struct pid_namespace *ns;
} CORE;
struct pid {
	unsigned int level;
	struct upid numbers[1];
} CORE;
struct task_struct {
	unsigned int flags;
	struct task_struct *group_leader;
	struct nsproxy *nsproxy;
	const struct cred *real_cred;
	struct pid *thread_pid;
} CORE;
struct seq_file;
struct bpf_iter_meta {
	struct seq_file *seq;
} CORE;
struct bpf_iter__task {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
} CORE;

// Helpers, by their stable numbers in the kernel's uapi.
static long (*bpf_probe_read_kernel)(void *dst, __u32 size, const void *src) = (void *)113;
static __u64 (*bpf_get_current_task)(void) = (void *)35;
static long (*bpf_seq_write)(struct seq_file *m, const void *data, __u32 len) = (void *)127;

// Reads kernel memory at `src` (a field, relocated) into `dst`; zero if
// it cannot be read.
#define READ(dst, src)                                                         \
	({                                                                     \
		__builtin_memset(&(dst), 0, sizeof(dst));                      \
		bpf_probe_read_kernel(&(dst), sizeof(dst),                     \
				      __builtin_preserve_access_index(&(src))); \
	})

#define PF_KTHREAD 0x00200000
#define MAX_PID_NS_LEVEL 32

// Positions in `record.inum`: nsproxyfs's kind order (cgroup ipc mnt net
// pid time user uts, pid and time as for children), then the pid and
// time namespaces the task itself is in.
enum {
	CGROUP, IPC, MNT, NET, PID_FOR_CHILDREN, TIME_FOR_CHILDREN, USER, UTS,
	PID, TIME, SLOTS,
};

// What one process reads as; bit i of `valid` is set when slot i could be
// read (as the readlink of its /proc/PID/ns link would succeed).
struct record {
	__u32 pid;
	__u32 flags;
	__u32 valid;
	__u32 inum[SLOTS];
};

// Counters, read by the daemon from this object's .bss map: `changes`
// moves on anything that can change an answer (fork, exit, a switch of
// namespaces or credentials); `switches` only on a process entering
// namespaces other than the ones it had.
__u64 changes = 0;
__u64 switches = 0;

static __attribute__((always_inline)) __u32 ns_inum(const void *ns)
{
	__u32 inum = 0;
	const struct ns_common *common = ns;
	if (ns)
		READ(inum, common->inum);
	return inum;
}

// The pid namespace `task` was created in (what task_active_pid_ns gives)
// and its level.
static __attribute__((always_inline)) struct pid *pid_of(struct task_struct *task)
{
	struct pid *pid;
	READ(pid, task->thread_pid);
	return pid;
}

SEC("iter/task")
int dump_tasks(struct bpf_iter__task *ctx)
{
	struct seq_file *seq;
	struct task_struct *task, *leader;
	struct record r = {};
	struct pid *mine, *theirs;
	struct pid_namespace *pidns, *their_ns;
	struct nsproxy *nsp;
	const struct cred *cred;
	struct user_namespace *userns;
	unsigned int level, their_level;
	struct upid up;

	READ(seq, ctx->meta->seq);
	READ(task, ctx->task);
	if (!task)
		return 0;
	READ(leader, task->group_leader);
	if (leader != task)
		return 0;

	// The pid as the reader sees it: the reader's pid namespace is the
	// one the iterator walks, so every task it visits has a number there.
	mine = pid_of((struct task_struct *)bpf_get_current_task());
	READ(level, mine->level);
	if (level >= MAX_PID_NS_LEVEL)
		return 0;
	READ(up, mine->numbers[level]);
	pidns = up.ns;
	theirs = pid_of(task);
	if (!theirs)
		return 0;
	READ(their_level, theirs->level);
	if (their_level < level || their_level >= MAX_PID_NS_LEVEL)
		return 0;
	READ(up, theirs->numbers[level]);
	if (up.ns != pidns)
		return 0;
	r.pid = up.nr;
	READ(up, theirs->numbers[their_level]);
	their_ns = up.ns;

	READ(r.flags, task->flags);
	r.flags &= PF_KTHREAD;

	READ(nsp, task->nsproxy);
	if (nsp) {
		void *ns;
		READ(ns, nsp->cgroup_ns);
		r.inum[CGROUP] = ns_inum(ns);
		READ(ns, nsp->ipc_ns);
		r.inum[IPC] = ns_inum(ns);
		READ(ns, nsp->mnt_ns);
		r.inum[MNT] = ns_inum(ns);
		READ(ns, nsp->net_ns);
		r.inum[NET] = ns_inum(ns);
		READ(ns, nsp->time_ns_for_children);
		r.inum[TIME_FOR_CHILDREN] = ns_inum(ns);
		READ(ns, nsp->uts_ns);
		r.inum[UTS] = ns_inum(ns);
		READ(ns, nsp->time_ns);
		r.inum[TIME] = ns_inum(ns);
		r.valid |= 1 << CGROUP | 1 << IPC | 1 << MNT | 1 << NET |
			   1 << TIME_FOR_CHILDREN | 1 << UTS | 1 << TIME;
		// pid_for_children reads only once that namespace has its
		// init (the first child after an unshare).
		struct pid_namespace *children;
		struct task_struct *reaper;
		READ(children, nsp->pid_ns_for_children);
		if (children) {
			READ(reaper, children->child_reaper);
			if (reaper) {
				r.inum[PID_FOR_CHILDREN] = ns_inum(children);
				r.valid |= 1 << PID_FOR_CHILDREN;
			}
		}
	}
	READ(cred, task->real_cred);
	if (cred) {
		READ(userns, cred->user_ns);
		if (userns) {
			r.inum[USER] = ns_inum(userns);
			r.valid |= 1 << USER;
		}
	}
	if (their_ns) {
		r.inum[PID] = ns_inum(their_ns);
		r.valid |= 1 << PID;
	}
	bpf_seq_write(seq, &r, sizeof(r));
	return 0;
}

// Everything a pass reads changes through one of these. Counters move
// when the change is done (fexit, and the fork tracepoint, which fires
// once the child is in the pid table): a pass that begins after a counter
// moved sees the change.

#define BPF_MAP_TYPE_HASH 1
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, __u64 flags) = (void *)2;
static long (*bpf_map_delete_elem)(void *map, const void *key) = (void *)3;
static __u64 (*bpf_get_current_pid_tgid)(void) = (void *)14;

// Threads inside commit_creds that are changing their user namespace.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} entering SEC(".maps");

SEC("fexit/switch_task_namespaces")
int on_switch(__u64 *args)
{
	__sync_fetch_and_add(&changes, 1);
	// A task leaving all namespaces (new == NULL) is exiting.
	if (args[1])
		__sync_fetch_and_add(&switches, 1);
	return 0;
}

SEC("fentry/commit_creds")
int on_creds_entry(__u64 *args)
{
	struct cred *new = (struct cred *)args[0];
	struct user_namespace *now, *next;
	const struct cred *cur;
	__u32 tid = (__u32)bpf_get_current_pid_tgid(), one = 1;
	READ(next, new->user_ns);
	READ(cur, ((struct task_struct *)bpf_get_current_task())->real_cred);
	READ(now, cur->user_ns);
	if (now != next)
		bpf_map_update_elem(&entering, &tid, &one, 0);
	return 0;
}

SEC("fexit/commit_creds")
int on_creds(__u64 *args)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__sync_fetch_and_add(&changes, 1);
	if (bpf_map_lookup_elem(&entering, &tid)) {
		bpf_map_delete_elem(&entering, &tid);
		__sync_fetch_and_add(&switches, 1);
	}
	return 0;
}

SEC("tp_btf/sched_process_fork")
int on_fork(__u64 *args)
{
	__sync_fetch_and_add(&changes, 1);
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
