// CO-RE views of the task and cgroup structures that the membership and
// pod hold programs read, as flavours (the ___af suffix is dropped when
// matching the kernel's BTF) so they do not clash with core.h's task_struct.
#pragma once

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct kernfs_node___af {
	__u64 id; // the cgroup id bpf_get_current_cgroup_id reports (5.5+)
};

struct cgroup_root___af;
struct cgroup___af;

struct cgroup_subsys_state___af {
	struct cgroup___af *cgroup;
	struct cgroup_subsys_state___af *parent;
};

struct cgroup___af {
	struct cgroup_subsys_state___af self; // self.parent is the parent cgroup's
	int level;                            // the root is 0
	struct kernfs_node___af *kn;
	struct cgroup_root___af *root; // the hierarchy
};

struct css_set___af {
	struct cgroup___af *dfl_cgrp; // the task's cgroup on the unified hierarchy
};

struct cred___af {
	struct {
		__u32 val;
	} uid;
	struct {
		__u32 val;
	} gid;
};

struct ns_common___af {
	unsigned int inum;
};

struct net___af {
	struct ns_common___af ns;
};

struct nsproxy___af {
	struct net___af *net_ns;
};

struct task_struct___af {
	int pid;
	int tgid;
	struct css_set___af *cgroups;
	const struct cred___af *cred;
	char comm[16];
	struct nsproxy___af *nsproxy;
};

#pragma clang attribute pop
