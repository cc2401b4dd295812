// ggcr-registry serves go-containerregistry's registry (pkg/registry) with its OCI 1.1
// referrers API switched on, which `crane registry serve` leaves off. The tests use it as a
// second real registry beside Debian's docker-registry (distribution 2.8, no referrers API).
// Blobs are kept on disk, manifests in memory; it listens on the address it is given only.
//
//	ggcr-registry 127.0.0.1:5000 /tmp/blobs
package main

import (
	"log"
	"net/http"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	if len(os.Args) != 3 {
		log.Fatalf("usage: %s ADDRESS BLOB-DIR", os.Args[0])
	}
	handler := registry.New(
		registry.WithBlobHandler(registry.NewDiskBlobHandler(os.Args[2])),
		registry.WithReferrersSupport(true),
		registry.Logger(log.New(os.Stderr, "", log.LstdFlags)),
	)
	server := &http.Server{Addr: os.Args[1], Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(server.ListenAndServe())
}
