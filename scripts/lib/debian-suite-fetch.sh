# shellcheck shell=bash
# Sourced, not run. Unpacks one package from another Debian suite than the machine's (Debian 12
# lacks Compose v2 and PostgreSQL client 13) without touching the system's apt state: a
# throw-away apt config fetches the .deb and dpkg -x unpacks it, so nothing is registered with
# dpkg. Used by setup-docker.sh and setup-old-pg-client.sh; the caller defines log and die.

# The machine's Debian mirror: deb822 sources first, then one-line sources.list; security
# mirrors are skipped.
debian_mirror() {
    local file uri=""
    for file in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list.d/*.sources; do
        [[ -r "$file" ]] || continue
        uri=$(awk '
            /^[[:space:]]*$/ { if (u != "" && s ~ /(^| )[a-z]+( |$)/ && u !~ /security/) { print u; exit } u=""; s="" }
            /^URIs:/   { u=$2 }
            /^Suites:/ { $1=""; s=$0 }
            END        { if (u != "" && s ~ /(^| )[a-z]+( |$)/ && u !~ /security/) print u }
        ' "$file" | head -n1)
        [[ -n "$uri" ]] && break
    done
    if [[ -z "$uri" && -r /etc/apt/sources.list ]]; then
        uri=$(awk '$1 == "deb" {
                i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($i !~ /security/) { print $i; exit } }' /etc/apt/sources.list)
    fi
    printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

# debian_suite_unpack SUITE PACKAGE DEST: dpkg -x PACKAGE's .deb from SUITE of the machine's
# mirror into DEST (created). Needs root. The body is a subshell so that its download dir goes
# on every exit, die included; call it as a plain command so that errexit stays in force.
debian_suite_unpack() (
    suite=$1
    package=$2
    dest=$3
    mirror=$(debian_mirror)
    tmp=$(mktemp -d)
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" EXIT
    mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/deb"
    # apt downloads as user _apt; mktemp's 0700 would force an unsandboxed fetch.
    chmod -R go+rx "$tmp"
    chown _apt "$tmp/lists/partial" "$tmp/deb" 2>/dev/null || true
    printf 'deb %s %s main\n' "$mirror" "$suite" >"$tmp/sources.list"
    apt_opts=(
        -o "Dir::Etc::SourceList=$tmp/sources.list"
        -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$tmp/lists"
        -o "Dir::Cache=$tmp/cache"
    )
    log "fetching $package from $mirror $suite"
    apt-get "${apt_opts[@]}" update -qq || die "apt-get update for $suite failed"
    (cd "$tmp/deb" && apt-get "${apt_opts[@]}" download "$package") ||
        die "apt-get download $package failed"
    deb=$(find "$tmp/deb" -maxdepth 1 -name "${package}_*.deb" | head -n1)
    [[ -n "$deb" ]] || die "no $package .deb downloaded"
    dpkg -x "$deb" "$dest" || die "dpkg -x $(basename "$deb") failed"
    log "unpacked $(basename "$deb")"
)
