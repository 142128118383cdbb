#!/bin/sh
# Writes tunnel-server's kubeconfig (--kubeconfig in the static pod): a
# client certificate for the user system:tunnel-server, the user
# base/tunnel-server-rbac.yaml grants Nodes get/list/watch and, in
# kube-system, the replicas' Leases. The key is made here and never leaves
# the host; the cluster signs a CertificateSigningRequest for it (signer
# kubernetes.io/kube-apiserver-client), the way kube-scheduler's
# scheduler.conf is a client certificate: static pods cannot use
# ServiceAccounts.
#
# Run it on each control-plane host, as root, with cluster-admin
# credentials (kubeadm: KUBECONFIG=/etc/kubernetes/admin.conf):
#
#   deploy/kubernetes/tunnel-server-kubeconfig.sh
#
# Needs kubectl, openssl and base64. The certificate lasts --days (365);
# run it again before then (the alert TunnelCertificateExpiringSoon does not
# see this file: watch it with your other kubeconfigs). On kubeadm clusters,
# `kubeadm kubeconfig user --client-name=system:tunnel-server` on a
# control-plane host writes the same kind of file without the CSR API.
set -eu

user=system:tunnel-server
out=/etc/kubernetes/tunnel/tunnel-server.conf
days=365
server=
ca_file=

usage() {
	cat <<EOF
usage: $0 [--out FILE] [--server URL] [--ca-file FILE] [--days N] [--user NAME]

  --out FILE      the kubeconfig to write (default $out)
  --server URL    kube-apiserver's URL (default: the current kubeconfig's)
  --ca-file FILE  CA bundle that verifies it (default: the current kubeconfig's)
  --days N        the certificate's lifetime (default $days)
  --user NAME     the certificate's Subject CN (default $user; the RBAC
                  bindings must name the same user)
EOF
	exit "${1:-2}"
}

while [ $# -gt 0 ]; do
	case $1 in
	--out) out=${2:?}; shift 2 ;;
	--server) server=${2:?}; shift 2 ;;
	--ca-file) ca_file=${2:?}; shift 2 ;;
	--days) days=${2:?}; shift 2 ;;
	--user) user=${2:?}; shift 2 ;;
	-h | --help) usage 0 ;;
	*) usage ;;
	esac
done
case $days in '' | *[!0-9]*) echo "$0: --days must be a whole number" >&2; exit 2 ;; esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
umask 077

# The key and a request for CN=$user, no organization: the user is bound by
# name, not by group.
openssl ecparam -name prime256v1 -genkey -noout -out "$tmp/key.pem"
openssl req -new -key "$tmp/key.pem" -subj "/CN=$user" -out "$tmp/csr.pem"

csr=tunnel-server-$(hostname)-$(date +%s)
kubectl create -f - >/dev/null <<EOF
apiVersion: certificates.k8s.io/v1
kind: CertificateSigningRequest
metadata:
  name: $csr
spec:
  request: $(base64 -w0 <"$tmp/csr.pem")
  signerName: kubernetes.io/kube-apiserver-client
  expirationSeconds: $((days * 86400))
  usages:
  - client auth
EOF
kubectl certificate approve "$csr" >/dev/null
cert=
for _ in $(seq 60); do
	cert=$(kubectl get csr "$csr" -o jsonpath='{.status.certificate}')
	[ -n "$cert" ] && break
	sleep 1
done
kubectl delete csr "$csr" >/dev/null
if [ -z "$cert" ]; then
	echo "$0: CertificateSigningRequest $csr was not signed within a minute" >&2
	exit 1
fi

if [ -z "$server" ]; then
	server=$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')
fi
if [ -n "$ca_file" ]; then
	ca=$(base64 -w0 <"$ca_file")
else
	ca=$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
fi
if [ -z "$server" ] || [ -z "$ca" ]; then
	echo "$0: no server URL or CA in the current kubeconfig; give --server and --ca-file" >&2
	exit 1
fi

mkdir -p "$(dirname "$out")"
cat >"$out.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kubernetes
  cluster:
    server: $server
    certificate-authority-data: $ca
users:
- name: $user
  user:
    client-certificate-data: $cert
    client-key-data: $(base64 -w0 <"$tmp/key.pem")
contexts:
- name: tunnel-server
  context:
    cluster: kubernetes
    user: $user
current-context: tunnel-server
EOF
mv "$out.tmp" "$out"
echo "wrote $out for user $user, valid $days days"
