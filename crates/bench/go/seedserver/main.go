// The design hitless replaces, as the Go seed server had it: crypto/tls asks GetCertificate
// on every handshake, which stats the certificate file and reloads the pair when its mtime
// changed; the client CAs are read once at start. Answers "ok\n" to every request.
// Exits when stdin closes, so it never outlives the benchmark that started it.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"io"
	"log"
	"net/http"
	"os"
	"sync"
	"time"
)

type reloader struct {
	certFile, keyFile string
	mu                sync.Mutex
	mtime             time.Time
	cert              *tls.Certificate
}

func (r *reloader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	info, err := os.Stat(r.certFile)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cert == nil || !info.ModTime().Equal(r.mtime) {
		pair, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
		if err != nil {
			return nil, err
		}
		r.cert, r.mtime = &pair, info.ModTime()
	}
	return r.cert, nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8443", "address")
	certFile := flag.String("cert", "", "certificate chain (PEM)")
	keyFile := flag.String("key", "", "private key (PEM)")
	caFile := flag.String("client-ca", "", "client CA certificates (PEM)")
	flag.Parse()
	caPEM, err := os.ReadFile(*caFile)
	if err != nil {
		log.Fatal(err)
	}
	cas := x509.NewCertPool()
	if !cas.AppendCertsFromPEM(caPEM) {
		log.Fatalf("%s: no certificate", *caFile)
	}
	r := &reloader{certFile: *certFile, keyFile: *keyFile}
	if _, err := r.get(nil); err != nil {
		log.Fatal(err)
	}
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	server := &http.Server{
		Addr: *listen,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			_, _ = io.WriteString(w, "ok\n")
		}),
		TLSConfig: &tls.Config{
			GetCertificate: r.get,
			ClientCAs:      cas,
			ClientAuth:     tls.RequireAndVerifyClientCert,
			MinVersion:     tls.VersionTLS12,
		},
		ErrorLog: log.New(io.Discard, "", 0),
	}
	log.Fatal(server.ListenAndServeTLS("", ""))
}
