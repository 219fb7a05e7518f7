// Package monitoring holds the alerts and the Grafana dashboard shipped
// for agentfenced's metrics, and reads the metric names they query, so
// that a test can hold them to what the daemon exports (e2e).
package monitoring

import (
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"
)

var (
	//go:embed prometheusrule.yaml
	rulesYAML []byte
	//go:embed agentfence-dashboard.json
	dashboardJSON []byte
)

// Query is one PromQL expression and where it is used.
type Query struct {
	Where, Expr string
}

// Queries are the expressions of the alerts and the dashboard. The alerts
// are parsed and checked as promtool checks a rules file.
func Queries() ([]Query, error) {
	var pr struct {
		Spec json.RawMessage `json:"spec"`
	}
	if err := yaml.Unmarshal(rulesYAML, &pr); err != nil {
		return nil, fmt.Errorf("prometheusrule.yaml: %w", err)
	}
	groups, err := yaml.JSONToYAML(pr.Spec)
	if err != nil {
		return nil, err
	}
	p := parser.NewParser(parser.Options{})
	rgs, errs := rulefmt.Parse(groups, false, model.UTF8Validation, p, slog.New(slog.DiscardHandler))
	if len(errs) > 0 {
		return nil, fmt.Errorf("prometheusrule.yaml: %w", errors.Join(errs...))
	}
	var out []Query
	for _, g := range rgs.Groups {
		for _, r := range g.Rules {
			out = append(out, Query{Where: "alert " + r.Alert, Expr: r.Expr})
		}
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(dashboardJSON, &dash); err != nil {
		return nil, fmt.Errorf("agentfence-dashboard.json: %w", err)
	}
	for _, pn := range dash.Panels {
		if len(pn.Targets) == 0 {
			return nil, fmt.Errorf("agentfence-dashboard.json: panel %q queries nothing", pn.Title)
		}
		for _, t := range pn.Targets {
			out = append(out, Query{Where: "panel " + pn.Title, Expr: t.Expr})
		}
	}
	for _, v := range dash.Templating.List {
		if m := labelValues.FindStringSubmatch(v.Definition); m != nil {
			out = append(out, Query{Where: "variable " + v.Name, Expr: m[1]})
		}
	}
	return out, nil
}

// labelValues is Grafana's label_values(SELECTOR, LABEL) variable query.
var labelValues = regexp.MustCompile(`^label_values\((.+),\s*\w+\)$`)

// MetricNames returns the metric names each query selects, by name, with
// where they are used. A query that does not parse, or selects series
// without naming a metric, is an error.
func MetricNames(qs []Query) (map[string][]string, error) {
	p := parser.NewParser(parser.Options{})
	out := map[string][]string{}
	for _, q := range qs {
		expr, err := p.ParseExpr(q.Expr)
		if err != nil {
			return nil, fmt.Errorf("%s: %q: %w", q.Where, q.Expr, err)
		}
		for _, sel := range parser.ExtractSelectors(expr) {
			name := ""
			for _, m := range sel {
				if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
					name = m.Value
				}
			}
			if name == "" {
				return nil, fmt.Errorf("%s: %q selects series without naming a metric", q.Where, q.Expr)
			}
			out[name] = append(out[name], q.Where)
		}
	}
	return out, nil
}
