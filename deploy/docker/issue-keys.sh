#!/bin/sh
# The compose federation's one-shot key job: `flsuite pki` issues the CA, the coordinator's
# certificate and one bundle per site into the pki volume (once), then copies to each service
# only what it needs: the coordinator its certificate, key and the sites' public keys; each site
# its own bundle. The CA key stays in the pki volume. Usage: issue-keys.sh SITE...
set -eu
PKI=/var/lib/flsuite/pki
if [ ! -f "$PKI/ca.crt" ]; then
    flsuite pki init --dir "$PKI"
    flsuite pki issue-coordinator --dir "$PKI" --host coordinator --host localhost
    for site in "$@"; do
        flsuite pki issue-site "$site" --dir "$PKI"
    done
fi
mkdir -p /keys/coordinator/coordinator /keys/coordinator/sites
cp "$PKI/ca.crt" /keys/coordinator/ca.crt
cp "$PKI/coordinator/coordinator.crt" "$PKI/coordinator/coordinator.key" /keys/coordinator/coordinator/
for site in "$@"; do
    mkdir -p "/keys/coordinator/sites/$site"
    cp "$PKI/sites/$site/node-auth.pub" "/keys/coordinator/sites/$site/"
    cp -R "$PKI/sites/$site/." "/keys/$site/"
done
