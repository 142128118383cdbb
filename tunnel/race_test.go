//go:build race

package tunnel

// raceEnabled is set under the race detector, whose sync.Pool drops some
// of what is put back: allocation counts mean nothing there.
const raceEnabled = true
