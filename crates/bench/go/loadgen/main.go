// The load generator of the requests benchmark (crates/bench/src/requests.rs): HTTPS GETs
// with mutual TLS from Go's net/http and crypto/tls, a client stack independent of rustls
// and of hitless. Runs -concurrency workers for -duration and prints one JSON document.
//
// Modes:
//
//	new       a new connection and a full TLS 1.3 handshake per request (no session cache)
//	h1        keep-alive HTTP/1.1: one connection per worker, reused
//	h2        keep-alive HTTP/2: -conns connections shared by the workers (streams multiplexed)
//	resume13  a new connection per request, resuming with TLS 1.3 tickets (a session cache
//	          per worker, so that a worker resumes the ticket its previous connection got)
//	resume12  the same, TLS 1.2 at most: Go's client resumes TLS 1.2 only with session
//	          tickets (RFC 5077), never with session IDs
//
// Workers are bounded by -duration and -max (requests per worker); every request by a 10 s
// timeout.
package main

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"sync"
	"time"
)

type event struct {
	start, end int64 // Unix nanoseconds
	resumed    bool
	ok         bool
	leaf       string
}

type worker struct {
	requests, errors, resumed int
	latUs                     []int64
	versions                  map[string]int
	protocols                 map[string]int
	leaves                    map[string]bool
	firstErrors               []string
	events                    []event
}

func versionName(v uint16) string {
	switch v {
	case tls.VersionTLS13:
		return "TLSv1.3"
	case tls.VersionTLS12:
		return "TLSv1.2"
	}
	return fmt.Sprintf("0x%04x", v)
}

func main() {
	url := flag.String("url", "", "https://127.0.0.1:PORT/path")
	sni := flag.String("sni", "localhost", "server name to verify")
	mode := flag.String("mode", "new", "new | h1 | h2 | resume13 | resume12")
	certFile := flag.String("cert", "", "client certificate (PEM)")
	keyFile := flag.String("key", "", "client key (PEM)")
	caFile := flag.String("ca", "", "server CA (PEM)")
	duration := flag.Duration("duration", time.Second, "how long to send requests")
	concurrency := flag.Int("concurrency", 8, "workers, each sending one request at a time")
	conns := flag.Int("conns", 2, "h2: connections shared by the workers")
	maxPer := flag.Int("max", 1000000, "at most this many requests per worker")
	events := flag.Bool("events", false, "print one event per request (start, end, resumed, leaf)")
	pace := flag.Duration("pace", 0, "at least this long between the starts of two requests of a worker")
	flag.Parse()

	pair, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		fail(err)
	}
	caPEM, err := os.ReadFile(*caFile)
	if err != nil {
		fail(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		fail(fmt.Errorf("%s: no certificate", *caFile))
	}
	tlsConfig := func() *tls.Config {
		c := &tls.Config{
			Certificates: []tls.Certificate{pair},
			RootCAs:      roots,
			ServerName:   *sni,
			MinVersion:   tls.VersionTLS13,
			MaxVersion:   tls.VersionTLS13,
		}
		switch *mode {
		case "resume13":
			c.ClientSessionCache = tls.NewLRUClientSessionCache(4)
		case "resume12":
			c.MinVersion, c.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
			c.ClientSessionCache = tls.NewLRUClientSessionCache(4)
		}
		return c
	}
	transport := func() *http.Transport {
		t := &http.Transport{
			TLSClientConfig:     tlsConfig(),
			MaxIdleConnsPerHost: *concurrency,
			IdleConnTimeout:     time.Minute,
		}
		switch *mode {
		case "h2":
			t.ForceAttemptHTTP2 = true
		case "h1":
			// A non-nil empty map turns HTTP/2 off; ALPN offers http/1.1 only.
			t.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
			t.TLSClientConfig.NextProtos = []string{"http/1.1"}
		case "new", "resume13", "resume12":
			t.DisableKeepAlives = true
			t.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
			t.TLSClientConfig.NextProtos = []string{"http/1.1"}
		default:
			fail(fmt.Errorf("unknown mode %q", *mode))
		}
		return t
	}
	shared := make([]*http.Transport, *conns)
	for i := range shared {
		shared[i] = transport()
	}

	deadline := time.Now().Add(*duration)
	started := time.Now()
	results := make([]*worker, *concurrency)
	var wg sync.WaitGroup
	for w := 0; w < *concurrency; w++ {
		var t *http.Transport
		if *mode == "h2" {
			t = shared[w%len(shared)]
		} else {
			t = transport()
		}
		client := &http.Client{Transport: t, Timeout: 10 * time.Second}
		r := &worker{versions: map[string]int{}, protocols: map[string]int{}, leaves: map[string]bool{}}
		results[w] = r
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < *maxPer && time.Now().Before(deadline); n++ {
				begin := time.Now()
				ev := event{start: begin.UnixNano()}
				err := get(client, *url, r, &ev)
				end := time.Now()
				ev.end = end.UnixNano()
				if err != nil {
					r.errors++
					if len(r.firstErrors) < 3 {
						r.firstErrors = append(r.firstErrors, err.Error())
					}
				} else {
					ev.ok = true
					r.requests++
					r.latUs = append(r.latUs, end.Sub(begin).Microseconds())
				}
				if *events {
					r.events = append(r.events, ev)
				}
				if rest := *pace - time.Since(begin); rest > 0 && time.Now().Add(rest).Before(deadline) {
					time.Sleep(rest)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(started)
	for _, t := range shared {
		t.CloseIdleConnections()
	}

	out := map[string]interface{}{}
	total, errs, resumed := 0, 0, 0
	lat := []int64{}
	versions, protocols, leaves := map[string]int{}, map[string]int{}, map[string]bool{}
	firstErrors := []string{}
	evs := [][]interface{}{}
	for w, r := range results {
		total += r.requests
		errs += r.errors
		resumed += r.resumed
		lat = append(lat, r.latUs...)
		for k, v := range r.versions {
			versions[k] += v
		}
		for k, v := range r.protocols {
			protocols[k] += v
		}
		for k := range r.leaves {
			leaves[k] = true
		}
		if len(firstErrors) < 5 {
			firstErrors = append(firstErrors, r.firstErrors...)
		}
		for _, e := range r.events {
			evs = append(evs, []interface{}{w, e.start, e.end, e.resumed, e.ok, e.leaf})
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	out["mode"] = *mode
	out["requests"] = total
	out["errors"] = errs
	out["resumed"] = resumed
	out["elapsed_s"] = elapsed.Seconds()
	out["lat_us"] = lat
	out["versions"] = versions
	out["protocols"] = protocols
	out["leaves"] = len(leaves)
	out["first_errors"] = firstErrors
	if *events {
		out["events"] = evs
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail(err)
	}
}

// get sends one GET and reads the whole answer, which must be 200 "ok\n".
func get(client *http.Client, url string, r *worker, ev *event) error {
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || string(body) != "ok\n" {
		return fmt.Errorf("status %d, body %q", resp.StatusCode, body)
	}
	if resp.TLS == nil {
		return fmt.Errorf("not TLS")
	}
	r.versions[versionName(resp.TLS.Version)]++
	r.protocols[resp.Proto]++
	if resp.TLS.DidResume {
		r.resumed++
		ev.resumed = true
	}
	if len(resp.TLS.PeerCertificates) > 0 {
		sum := sha256.Sum256(resp.TLS.PeerCertificates[0].Raw)
		ev.leaf = hex.EncodeToString(sum[:8])
		r.leaves[ev.leaf] = true
	}
	return nil
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "loadgen:", err)
	os.Exit(2)
}
