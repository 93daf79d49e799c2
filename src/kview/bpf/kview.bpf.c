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
typedef struct {
	unsigned int val;
} kuid_t;
typedef struct {
	unsigned int val;
} kgid_t;
struct group_info {
	int ngroups;
	kgid_t gid[];
} CORE;
// The capability sets are 64 bits wide (a u64 since Linux 6.3, two u32
// before: the same bytes on a little-endian machine): only their place is
// relocated, and they are copied as 8 bytes.
struct kernel_cap_struct {
	__u64 val;
} CORE;
struct cred {
	kuid_t uid;
	kgid_t gid;
	kuid_t suid;
	kgid_t sgid;
	kuid_t euid;
	kgid_t egid;
	kuid_t fsuid;
	kgid_t fsgid;
	struct kernel_cap_struct cap_inheritable;
	struct kernel_cap_struct cap_permitted;
	struct kernel_cap_struct cap_effective;
	struct user_namespace *user_ns;
	struct group_info *group_info;
} CORE;
struct upid {
	int nr;
	struct pid_namespace *ns;
} CORE;
struct hlist_node;
struct hlist_head {
	struct hlist_node *first;
} CORE;
struct pid {
	unsigned int level;
	struct hlist_head tasks[4];
	struct upid numbers[1];
} CORE;
// Present when the kernel is built with seccomp (only then is `mode`
// read: see dump_thread).
struct seccomp {
	int mode;
} CORE;
struct files_struct;
struct task_struct {
	unsigned int flags;
	int tgid;
	struct task_struct *group_leader;
	struct files_struct *files;
	struct nsproxy *nsproxy;
	const struct cred *real_cred;
	struct pid *thread_pid;
	struct seccomp seccomp;
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
static long (*bpf_ringbuf_output)(void *ringbuf, void *data, __u64 size, __u64 flags) = (void *)130;

// Reads kernel memory at `src` (a field, relocated) into `dst`; zero if
// it cannot be read.
#define READ(dst, src)                                                         \
	({                                                                     \
		__builtin_memset(&(dst), 0, sizeof(dst));                      \
		bpf_probe_read_kernel(&(dst), sizeof(dst),                     \
				      __builtin_preserve_access_index(&(src))); \
	})

#define PF_KTHREAD 0x00200000
#define PF_EXITING 0x00000004
#define MAX_PID_NS_LEVEL 32
// The kernel's PIDTYPE_TGID: a struct pid that numbers a thread group
// has its leader on this list.
#define PIDTYPE_TGID 1

// Positions in `record.inum`: nsproxyfs's kind order (cgroup ipc mnt net
// pid time user uts, pid and time as for children), then the pid and
// time namespaces the task itself is in.
enum {
	CGROUP, IPC, MNT, NET, PID_FOR_CHILDREN, TIME_FOR_CHILDREN, USER, UTS,
	PID, TIME, SLOTS,
};

// Bit of `record.valid` set for a kernel thread (above the slots' bits).
#define KTHREAD_BIT 31

// What one process reads as; bit i of `valid` is set when slot i could be
// read (as the readlink of its /proc/PID/ns link would succeed), bit
// KTHREAD_BIT when it is a kernel thread.
struct record {
	__u32 pid;
	__u32 valid;
	__u32 inum[SLOTS];
};

// Counters, read by the daemon from this object's .bss map, in this
// order: `changes` moves on anything that can change an answer (fork,
// exit, exec, setns(2), unshare(2)); `switches` only on setns(2) and
// unshare(2); `lost` on each record the programs below could not put
// into `events` (it was full). Then the reader's pid namespace (its
// address and level), as the iterator finds it on its first pass: the
// tracepoints number processes as that reader does.
__u64 changes = 0;
__u64 switches = 0;
__u64 lost = 0;
__u64 reader_ns = 0;
__u32 reader_level = 0;
__u32 reader_known = 0;

#define __uint(name, val) int (*name)[val]
#define BPF_MAP_TYPE_RINGBUF 27

// The records of processes made, ended or changed by exec since the
// daemon last looked: each is the process as a pass would read it just
// after that event (see the tracepoints at the end).
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

// A doorbell: one 8-byte record for each successful setns(2) or
// unshare(2), so that discovery, polling this map's descriptor, wakes at
// once instead of at its next look at `switches`. A full ring drops the
// record; `switches` stays the truth.
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 12);
} switched SEC(".maps");

// The inode of namespace `space` (any namespace type: each embeds its
// ns_common as the field `ns`, at its own offset); 0 for none.
#define NS_INUM(space) ((space) ? (space)->ns.inum : 0)

// Fills the namespace slots of `r` other than PID (and the kernel-thread
// bit) from `task`: its nsproxy and credentials, as its /proc/PID/ns
// links read them.
static __attribute__((always_inline)) void fill_set(struct task_struct *task, struct record *r)
{
	struct nsproxy *nsp;
	const struct cred *cred;
	unsigned int flags;

	flags = task->flags;
	if (flags & PF_KTHREAD)
		r->valid |= 1u << KTHREAD_BIT;
	nsp = task->nsproxy;
	// An exiting task counts as out of its namespaces already, as it is
	// a moment later when the kernel drops them.
	if (nsp && !(flags & PF_EXITING)) {
		r->inum[CGROUP] = NS_INUM(nsp->cgroup_ns);
		r->inum[IPC] = NS_INUM(nsp->ipc_ns);
		r->inum[MNT] = NS_INUM(nsp->mnt_ns);
		r->inum[NET] = NS_INUM(nsp->net_ns);
		r->inum[TIME_FOR_CHILDREN] = NS_INUM(nsp->time_ns_for_children);
		r->inum[UTS] = NS_INUM(nsp->uts_ns);
		r->inum[TIME] = NS_INUM(nsp->time_ns);
		r->valid |= 1 << CGROUP | 1 << IPC | 1 << MNT | 1 << NET |
			    1 << TIME_FOR_CHILDREN | 1 << UTS | 1 << TIME;
		// pid_for_children reads only once that namespace has its
		// init (the first child after an unshare).
		struct pid_namespace *children = nsp->pid_ns_for_children;
		if (children && children->child_reaper) {
			r->inum[PID_FOR_CHILDREN] = children->ns.inum;
			r->valid |= 1 << PID_FOR_CHILDREN;
		}
	}
	cred = task->real_cred;
	if (cred && cred->user_ns) {
		r->inum[USER] = cred->user_ns->ns.inum;
		r->valid |= 1 << USER;
	}
}

// Fills `r` with what `task` reads as for a reader whose pid namespace is
// `pidns` (as a number) at `level`; 0 if `task` is not a thread-group
// leader that reader can see.
//
// Fields are read by plain loads (the kernel checks them against its
// BTF, and a load through a NULL pointer reads 0); only pid numbers at a
// level other than 0, whose index varies, are copied with
// bpf_probe_read_kernel. The fields are chosen to touch few of the task's
// cache lines: the task iterator has just read the task's struct pid, so
// the pid number and whether the task leads its thread group (its struct
// pid numbers a thread group) come from there.
static __attribute__((always_inline)) int fill(struct task_struct *task, struct record *r,
					       unsigned int level, __u64 pidns)
{
	struct pid *theirs;
	struct pid_namespace *their_ns;
	unsigned int their_level;
	struct upid up;

	if (!task)
		return 0;
	theirs = task->thread_pid;
	if (!theirs || !theirs->tasks[PIDTYPE_TGID].first)
		return 0;
	their_level = theirs->level;
	if (level == 0 && their_level == 0) {
		// The common case, both in the initial pid namespace.
		r->pid = theirs->numbers[0].nr;
		their_ns = theirs->numbers[0].ns;
		if (their_ns) {
			r->inum[PID] = their_ns->ns.inum;
			r->valid |= 1 << PID;
		}
	} else {
		if (level >= MAX_PID_NS_LEVEL || their_level < level ||
		    their_level >= MAX_PID_NS_LEVEL)
			return 0;
		READ(up, theirs->numbers[level]);
		if ((__u64)up.ns != pidns)
			return 0;
		r->pid = up.nr;
		READ(up, theirs->numbers[their_level]);
		their_ns = up.ns;
		if (their_ns) {
			READ(r->inum[PID], their_ns->ns.inum);
			r->valid |= 1 << PID;
		}
	}

	fill_set(task, r);
	return 1;
}

SEC("iter/task")
int dump_tasks(struct bpf_iter__task *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct record r = {};
	struct pid *mine;
	unsigned int level;
	struct upid up;

	// The reader's pid namespace is the one the iterator walks, so
	// every task it visits has a number there. The reader (the process
	// that loaded this object, the daemon) keeps its pid namespace for
	// life, so it is found once, with the helpers every kernel with the
	// task iterator has.
	if (!reader_known) {
		struct task_struct *me = (struct task_struct *)bpf_get_current_task();

		READ(mine, me->thread_pid);
		READ(level, mine->level);
		if (level >= MAX_PID_NS_LEVEL)
			return 0;
		READ(up, mine->numbers[level]);
		reader_ns = (__u64)up.ns;
		reader_level = level;
		reader_known = 1;
	}
	if (fill(ctx->task, &r, reader_level, reader_ns))
		bpf_seq_write(seq, &r, sizeof(r));
	return 0;
}

// Supplementary groups a thread record carries; a thread with more is
// marked so, and the daemon reads its credentials from /proc instead.
#define THREAD_GROUPS 32

// One thread: its namespaces (`r`, its own pid namespace in slot PID) and
// the credentials its /proc/TID/status shows (objective, as /proc reads
// them): real, effective, saved and filesystem uid, then gid; effective,
// permitted and inheritable capabilities; the number of supplementary
// groups and the first THREAD_GROUPS of them. `creds` is 1 once they are
// read. Then the id of the thread's group leader as the reader numbers
// it (0 if unknown), and the thread's seccomp mode (0 none, 1 strict, 2
// filters) with bit SECCOMP_KNOWN set once it is read. Then whether the
// thread shares its group leader's descriptor table (1; 0 if not, or if
// either has none), which kcmp(2) would otherwise tell, thread by thread;
// only the answer leaves the kernel, never where the table is.
struct thread_record {
	struct record r;
	__u32 uid[4];
	__u32 gid[4];
	__u64 caps[3];
	__u32 creds;
	__u32 ngroups;
	__u32 groups[THREAD_GROUPS];
	__u32 leader;
	__u32 seccomp;
	__u32 leader_files;
	__u32 reserved;
};

#define SECCOMP_KNOWN 0x80000000u
// The kind of CO-RE relocation that asks whether the running kernel has a
// field (libbpf's bpf_core_field_exists).
#define FIELD_EXISTS 2

// The number of `pid` in the reader's pid namespace, or 0 if it has none
// there (or that namespace is not known yet).
static __attribute__((always_inline)) __u32 reader_nr(struct pid *pid)
{
	unsigned int level;
	struct upid up;

	if (!pid || !reader_known || reader_level >= MAX_PID_NS_LEVEL)
		return 0;
	level = pid->level;
	if (level < reader_level)
		return 0;
	READ(up, pid->numbers[reader_level]);
	return (__u64)up.ns == reader_ns ? up.nr : 0;
}

// One thread, for the daemon's checks of a single caller or target:
// attached to that thread alone (the link's tid), it writes one
// `struct thread_record`, or nothing if the thread is gone. `r.pid` is the
// visited thread's id as the reader's pid namespace numbers it (0 before
// the first pass found that namespace): the reader takes the record only
// if it is the thread it asked for, as a kernel that ignores the link's
// tid visits every task instead. Attached to a process (the link's pid),
// it writes one record per thread of it, for an injector's look at a
// stopped process; the reader then checks `leader` in each.
SEC("iter/task")
int dump_thread(struct bpf_iter__task *ctx)
{
	struct task_struct *task = ctx->task;
	struct thread_record t = {};
	struct pid *theirs;
	const struct cred *cred;
	struct group_info *gi;
	unsigned int level, i;
	struct upid up;
	int n;

	if (!task)
		return 0;
	theirs = task->thread_pid;
	if (theirs) {
		level = theirs->level;
		if (level < MAX_PID_NS_LEVEL) {
			READ(up, theirs->numbers[level]);
			if (up.ns) {
				READ(t.r.inum[PID], up.ns->ns.inum);
				t.r.valid |= 1 << PID;
			}
		}
		t.r.pid = reader_nr(theirs);
	}
	if (task->group_leader) {
		t.leader = reader_nr(task->group_leader->thread_pid);
		if (task->files && task->files == task->group_leader->files)
			t.leader_files = 1;
	}
	if (__builtin_preserve_field_info(task->seccomp.mode, FIELD_EXISTS))
		t.seccomp = (__u32)task->seccomp.mode | SECCOMP_KNOWN;
	fill_set(task, &t.r);
	cred = task->real_cred;
	if (cred) {
		READ(t.uid[0], cred->uid);
		READ(t.uid[1], cred->euid);
		READ(t.uid[2], cred->suid);
		READ(t.uid[3], cred->fsuid);
		READ(t.gid[0], cred->gid);
		READ(t.gid[1], cred->egid);
		READ(t.gid[2], cred->sgid);
		READ(t.gid[3], cred->fsgid);
		READ(t.caps[0], cred->cap_effective);
		READ(t.caps[1], cred->cap_permitted);
		READ(t.caps[2], cred->cap_inheritable);
		gi = cred->group_info;
		n = 0;
		if (gi)
			READ(n, gi->ngroups);
		if (n >= 0) {
			t.ngroups = n;
			t.creds = 1;
		}
		if (gi && n > 0) {
			char *gids = (char *)__builtin_preserve_access_index(&gi->gid);
			for (i = 0; i < THREAD_GROUPS && i < (unsigned int)n; i++)
				bpf_probe_read_kernel(&t.groups[i], 4, gids + 4 * i);
		}
	}
	bpf_seq_write(ctx->meta->seq, &t, sizeof(t));
	return 0;
}

// Everything a pass reads changes through one of these: a fork (a new
// process; a new pid namespace getting its init), an exit, an exec (a
// thread that execs takes over its thread group; its time namespace may
// become its time_for_children one), or a successful setns(2) or
// unshare(2) (namespaces and user namespace alike). They are
// tracepoints, not fentry/fexit, which some kernels refuse. The fork
// tracepoint fires once the child is in the pid table and the syscall
// one once the call is done, so a pass that begins after the counter
// moved sees the change. The exit tracepoint fires before the kernel
// drops the task's namespaces; the iterator counts an exiting task
// (PF_EXITING, set before that tracepoint) as having none already.
//
// Forks, exits and execs also put the record of each process they change
// into `events`, read at that moment (the fields a record holds change
// only through these events and the two system calls), so the daemon can
// keep a pass up to date through them until the next setns(2) or
// unshare(2) anywhere.

struct pt_regs___x86 {
	long orig_ax;
} CORE;
struct pt_regs___arm64 {
	int syscallno;
} CORE;

// Syscall numbers of this architecture, set by the loader.
volatile const __u64 sys_setns = 0;
volatile const __u64 sys_unshare = 0;

SEC("tp_btf/sys_exit")
int on_sys_exit(__u64 *args)
{
	void *regs = (void *)args[0];
	long ret = (long)args[1];
	long nr = -1;
	if (ret != 0)
		return 0;
	if (__builtin_preserve_field_info(((struct pt_regs___x86 *)regs)->orig_ax, FIELD_EXISTS)) {
		READ(nr, ((struct pt_regs___x86 *)regs)->orig_ax);
	} else if (__builtin_preserve_field_info(((struct pt_regs___arm64 *)regs)->syscallno, FIELD_EXISTS)) {
		int no;
		READ(no, ((struct pt_regs___arm64 *)regs)->syscallno);
		nr = no;
	}
	if (nr >= 0 && (nr == sys_setns || nr == sys_unshare)) {
		__u64 ring = 1;

		__sync_fetch_and_add(&switches, 1);
		__sync_fetch_and_add(&changes, 1);
		bpf_ringbuf_output(&switched, &ring, sizeof(ring), 0);
	}
	return 0;
}

// Puts the record of `task` into `events`, if the reader can see it.
static __attribute__((always_inline)) void emit(struct task_struct *task)
{
	struct record r = {};

	if (!reader_known || !fill(task, &r, reader_level, reader_ns))
		return;
	if (bpf_ringbuf_output(&events, &r, sizeof(r), 0))
		__sync_fetch_and_add(&lost, 1);
}

// A fork: the child as it is born (it has not run yet, so only its own
// later setns(2), unshare(2), exec or exit change it), and its parent's
// thread-group leader, whose pid_for_children link becomes readable when
// this child is the init of the pid namespace the parent unshared.
SEC("tp_btf/sched_process_fork")
int on_fork(__u64 *args)
{
	struct task_struct *parent = (struct task_struct *)args[0];
	struct task_struct *child = (struct task_struct *)args[1];

	__sync_fetch_and_add(&changes, 1);
	emit(child);
	emit(parent->group_leader);
	return 0;
}

// An exit: PF_EXITING is set, so a leader's record has no namespaces.
SEC("tp_btf/sched_process_exit")
int on_exit(__u64 *args)
{
	__sync_fetch_and_add(&changes, 1);
	emit((struct task_struct *)args[0]);
	return 0;
}

// An exec: the exec'ing thread now leads its thread group (a thread that
// exec'd took over from the leader, with its own namespaces), and its own
// time namespace may have become its time_for_children one.
SEC("tp_btf/sched_process_exec")
int on_exec(__u64 *args)
{
	__sync_fetch_and_add(&changes, 1);
	emit((struct task_struct *)args[0]);
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
