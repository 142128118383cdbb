module github.com/tunnel-project/tunnel

go 1.26.8

require (
	github.com/hashicorp/yamux v0.1.2 // indirect
	github.com/spf13/pflag v1.1.0 // indirect
)
