package main

import (
	"errors"
	"fmt"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/prometheus/promql/parser"
)

// checkRules parses every rule's PromQL as Prometheus would when it loads the rule: the types
// only say an expression is a string, and Prometheus refuses a whole group over one typo.
func checkRules(rule *monitoringv1.PrometheusRule) error {
	promql := parser.NewParser(parser.Options{})
	var errs []error
	for _, group := range rule.Spec.Groups {
		for _, r := range group.Rules {
			if _, err := promql.ParseExpr(r.Expr.String()); err != nil {
				errs = append(errs, fmt.Errorf("rule %s%s of group %s: %w", r.Alert, r.Record, group.Name, err))
			}
		}
	}
	return errors.Join(errs...)
}
