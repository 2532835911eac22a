// Command imagebench is the program both ko and cachectl image package in the image
// benchmark: a small JSON-over-HTTP service, the size of a typical Go microservice binary.
package main

import (
	"encoding/json"
	"log"
	"net/http"
	"os"
	"runtime"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "version" {
		json.NewEncoder(os.Stdout).Encode(map[string]string{"os": runtime.GOOS, "arch": runtime.GOARCH})
		return
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]string{"hello": r.URL.Path})
	})
	log.Fatal(http.ListenAndServe(":8080", nil))
}
