//go:build race

package mux

// raceEnabled scales test data down under the race detector, which makes
// every byte copied expensive.
const raceEnabled = true
