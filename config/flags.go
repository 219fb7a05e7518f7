package config

import (
	"flag"
	"fmt"
	"os"
	"time"
)

// Flags binds --config and the command-line overrides of config keys to a
// flag.FlagSet. Only flags given on the command line override the file; a
// flag left out never resets a key to its default.
type Flags struct {
	fs   *flag.FlagSet
	path *string
	vals map[string]*string
	durs map[string]*Duration
}

// override is one flag and the key it overrides.
type override struct {
	flag, key, usage string
	get              func(*Config) string
	set              func(*Config, string)
}

var overrides = []override{
	{"api-socket", "api_socket", "unix socket of the API",
		func(c *Config) string { return c.APISocket }, func(c *Config, v string) { c.APISocket = v }},
	{"metrics-addr", "metrics_addr", `host:port of /metrics, /healthz and /readyz ("" disables)`,
		func(c *Config) string { return c.MetricsAddr }, func(c *Config, v string) { c.MetricsAddr = v }},
	{"bpffs-path", "bpffs_path", "directory on bpffs where programs, links and maps are pinned",
		func(c *Config) string { return c.BPFFSPath }, func(c *Config, v string) { c.BPFFSPath = v }},
	{"cgroup-root", "cgroup_root", `cgroup v2 mount ("" finds it in /proc/self/mountinfo)`,
		func(c *Config) string { return c.CgroupRoot }, func(c *Config, v string) { c.CgroupRoot = v }},
	{"state-dir", "state_dir", "directory for the audit spool and other state",
		func(c *Config) string { return c.StateDir }, func(c *Config, v string) { c.StateDir = v }},
	{"audit-file", "audit.file", `audit destination: "-" for stdout or an absolute path`,
		func(c *Config) string { return c.Audit.File }, func(c *Config, v string) { c.Audit.File = v }},
	{"audit-format", "audit.format", "audit format: json or ocsf",
		func(c *Config) string { return c.Audit.Format }, func(c *Config, v string) { c.Audit.Format = v }},
	{"kubeconfig", "kubernetes.kubeconfig", `kubeconfig file for kubernetes.enabled ("" uses the pod's service account)`,
		func(c *Config) string { return c.Kubernetes.Kubeconfig }, func(c *Config, v string) { c.Kubernetes.Kubeconfig = v }},
	{"node-name", "kubernetes.node_name", `this node's name for kubernetes.enabled ("" reads $NODE_NAME)`,
		func(c *Config) string { return c.Kubernetes.NodeName }, func(c *Config, v string) { c.Kubernetes.NodeName = v }},
	{"drift-action", "sessions.drift_action", "what a session that spent its violation budget gets: quarantine, kill or none",
		func(c *Config) string { return string(c.Sessions.DriftAction) }, func(c *Config, v string) { c.Sessions.DriftAction = DriftAction(v) }},
}

// durationOverride is a duration flag and the key it overrides.
type durationOverride struct {
	flag, key, usage string
	field            func(*Config) *Duration
}

var durationOverrides = []durationOverride{
	{"default-ttl", "sessions.default_ttl", "session lifetime when the opener gives none",
		func(c *Config) *Duration { return &c.Sessions.DefaultTTL }},
	{"max-ttl", "sessions.max_ttl", "longest session lifetime an opener may ask for",
		func(c *Config) *Duration { return &c.Sessions.MaxTTL }},
}

// Set parses a duration flag value ("30s"), so a Duration can be a flag.Value.
func (d *Duration) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// BindFlags registers --config and one flag per overridable key on fs:
// --api-socket, --metrics-addr, --bpffs-path, --cgroup-root, --state-dir,
// --audit-file, --audit-format, --drift-action, --default-ttl, --max-ttl.
// Call fs.Parse, then Load.
func BindFlags(fs *flag.FlagSet) *Flags {
	f := &Flags{fs: fs, vals: map[string]*string{}, durs: map[string]*Duration{}}
	f.path = fs.String("config", "", "YAML config file (see docs/config.md); empty uses built-in defaults")
	def := Default()
	for _, o := range overrides {
		f.vals[o.flag] = fs.String(o.flag, o.get(&def), fmt.Sprintf("%s (overrides %s)", o.usage, o.key))
	}
	for _, o := range durationOverrides {
		d := new(Duration)
		*d = *o.field(&def)
		f.durs[o.flag] = d
		fs.Var(d, o.flag, fmt.Sprintf("%s (overrides %s)", o.usage, o.key))
	}
	return f
}

// ConfigPath is the value of --config ("" when not given).
func (f *Flags) ConfigPath() string { return *f.path }

// Apply copies the flags that were set on the command line into c and
// returns the config keys it overrode. Flags left at their defaults are
// ignored, so they never mask the file.
func (f *Flags) Apply(c *Config) []string {
	set := map[string]bool{}
	f.fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	var keys []string
	for _, o := range overrides {
		if set[o.flag] {
			o.set(c, *f.vals[o.flag])
			keys = append(keys, o.key)
		}
	}
	for _, o := range durationOverrides {
		if set[o.flag] {
			*o.field(c) = *f.durs[o.flag]
			keys = append(keys, o.key)
		}
	}
	return keys
}

// Load reads --config (or starts from Default() when it is empty), applies
// the flags set on the command line, and validates the result. A flag may
// therefore repair a key that is invalid in the file.
func (f *Flags) Load() (Config, error) {
	c := Default()
	if p := f.ConfigPath(); p != "" {
		data, err := os.ReadFile(p)
		if err != nil {
			return Config{}, fmt.Errorf("config: %w", err)
		}
		if c, err = decode(data); err != nil {
			return Config{}, fmt.Errorf("%s: %w", p, err)
		}
	}
	f.Apply(&c)
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}
