// Command validate checks rendered Kubernetes manifests strictly: every document is decoded by
// its apiVersion and kind into the Go type the API server itself uses, as the API server's
// strict field validation decodes it (case-sensitive), and any field that type does not have (a
// misspelt key, a key in the wrong case or at the wrong level), any value of the wrong type, a
// duplicated key or a kind it does not know is an error; so is PromQL in a PrometheusRule that
// Prometheus would not parse. Helm's own lint only checks YAML syntax
// and a few top-level keys; the API server would drop an unknown field with a warning at best.
//
// Usage: validate FILE...   (or `-` for standard input; each a stream of YAML documents)
package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
	kjson "sigs.k8s.io/json"
	strictyaml "sigs.k8s.io/yaml"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: validate FILE... (- for standard input)")
		os.Exit(2)
	}
	failed := false
	for _, name := range os.Args[1:] {
		count, errs := validateFile(name)
		for _, err := range errs {
			fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		}
		if len(errs) > 0 {
			failed = true
			continue
		}
		fmt.Printf("%s: %d documents valid\n", name, count)
	}
	if failed {
		os.Exit(1)
	}
}

// validateFile checks every document of one file, and reports all the errors it finds rather
// than the first, so one run shows everything a change broke.
func validateFile(name string) (int, []error) {
	input, err := open(name)
	if err != nil {
		return 0, []error{err}
	}
	defer input.Close()
	reader := yaml.NewYAMLReader(bufio.NewReader(input))
	count := 0
	var errs []error
	for {
		document, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return count, append(errs, fmt.Errorf("reading the YAML stream: %w", err))
		}
		if isEmpty(document) {
			continue
		}
		count++
		if err := validateDocument(document); err != nil {
			errs = append(errs, fmt.Errorf("document %d: %w", count, err))
		}
	}
	if count == 0 {
		errs = append(errs, errors.New("no documents: an empty render is a broken template"))
	}
	return count, errs
}

func open(name string) (io.ReadCloser, error) {
	if name == "-" {
		return io.NopCloser(os.Stdin), nil
	}
	return os.Open(name)
}

// isEmpty is true of a document holding only comments or whitespace, which helm emits for a
// template whose condition is off.
func isEmpty(document []byte) bool {
	for _, line := range strings.Split(string(document), "\n") {
		line = strings.TrimSpace(line)
		if line != "" && line != "---" && !strings.HasPrefix(line, "#") {
			return false
		}
	}
	return true
}

type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
}

func validateDocument(document []byte) error {
	var meta typeMeta
	// Lenient on purpose: only the type is wanted here; the strict pass below sees every field.
	if err := strictyaml.Unmarshal(document, &meta); err != nil {
		return fmt.Errorf("not a Kubernetes object: %w", err)
	}
	object, known := newObject(meta.APIVersion, meta.Kind)
	if !known {
		return fmt.Errorf("%s %q: unknown apiVersion/kind (add its type to deploy/validate/types.go)",
			describe(meta), meta.Metadata.Name)
	}
	if meta.Metadata.Name == "" {
		return fmt.Errorf("%s: metadata.name is empty", describe(meta))
	}
	if err := decodeStrict(document, object); err != nil {
		return fmt.Errorf("%s %q: %w", describe(meta), meta.Metadata.Name, err)
	}
	if rule, ok := object.(*monitoringv1.PrometheusRule); ok {
		if err := checkRules(rule); err != nil {
			return fmt.Errorf("%s %q: %w", describe(meta), meta.Metadata.Name, err)
		}
	}
	return nil
}

// decodeStrict decodes as the API server does with fieldValidation=Strict. Not
// sigs.k8s.io/yaml's UnmarshalStrict: it ends in encoding/json, which matches field names
// case-insensitively, so `containerport` would pass for `containerPort` there, and the API
// server would then drop it.
func decodeStrict(document []byte, object any) error {
	data, err := strictyaml.YAMLToJSONStrict(document)
	if err != nil {
		return err
	}
	strict, err := kjson.UnmarshalStrict(data, object, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

func describe(meta typeMeta) string {
	return meta.APIVersion + "/" + meta.Kind
}
