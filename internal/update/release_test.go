package update_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/update"
	"github.com/banger-vm/banger/internal/update/updatetest"
)

// These tests install real banger builds (v1.0.0, updated to v1.1.0) into a sandboxed
// home, serve releases from a real HTTP server, and drive the installed binary's
// `banger update` with a real daemon running from it.

type releases struct {
	key              updatetest.Key
	old, new, broken updatetest.Build // broken: v1.1.0 whose doctor FAILs
}

var (
	shared updatetest.Shared
	rel    releases
)

func TestMain(m *testing.M) {
	code := m.Run()
	shared.Remove()
	os.Exit(code)
}

// builds compiles the test releases once for the package (seconds with a warm build cache).
func builds(t *testing.T) releases {
	t.Helper()
	shared.Do(t, func(dir string) error {
		rel.key = updatetest.NewKey(t)
		b, err := updatetest.BuildReleases(dir, []updatetest.Spec{
			{Sub: "old", Version: "v1.0.0", Hooks: "crash"},
			{Sub: "new", Version: "v1.1.0", Hooks: "crash"},
			{Sub: "broken", Version: "v1.1.0", Hooks: "crash,doctor-fail"},
		}, rel.key.Pub)
		rel.old, rel.new, rel.broken = b[0], b[1], b[2]
		return err
	})
	return rel
}

func decodeResult(t *testing.T, out string) update.Result {
	t.Helper()
	var res update.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("update --json printed %q: %v", out, err)
	}
	return res
}

func stageMS(res update.Result, names ...string) (total float64) {
	for _, s := range res.Stages {
		for _, n := range names {
			if s.Name == n {
				total += s.DurationMS
			}
		}
	}
	return total
}

func TestUpdateHappyPath(t *testing.T) {
	r := builds(t)
	ch := updatetest.NewChannel(t)
	ch.Publish(t, "v1.1.0", updatetest.Tarball(t, r.new), r.key.Priv)
	s := updatetest.NewSandbox(t, r.old, ch.URL(), "")
	s.Must("daemon", "start")
	before := s.Status()

	var check update.CheckResult
	if err := json.Unmarshal([]byte(s.Must("update", "--check", "--json").Stdout), &check); err != nil {
		t.Fatal(err)
	}
	if !check.UpdateAvailable || check.Current != "v1.0.0" || check.Latest != "v1.1.0" {
		t.Fatalf("check: %+v", check)
	}

	res := decodeResult(t, s.Must("update", "--json").Stdout)
	if res.Status != "updated" || res.From != "v1.0.0" || res.To != "v1.1.0" {
		t.Fatalf("update result: %+v", res)
	}
	t.Logf("update v1.0.0 -> v1.1.0: total %.0f ms: %+v", res.TotalMS, res.Stages)
	s.InstalledIs(r.new)
	for _, n := range update.Binaries() {
		if !updatetest.SameFile(t, s.Path(n)+update.PreviousSuffix, r.old.Path(n)) {
			t.Errorf("%s.previous is not v1.0.0's", n)
		}
	}
	after := s.Status()
	if after.Version != "v1.1.0" || after.PID == before.PID {
		t.Fatalf("daemon after update: version %s pid %d (before: pid %d)", after.Version, after.PID, before.PID)
	}
	if left := s.Leftovers(); len(left) > 0 {
		t.Errorf("leftovers after a successful update: %v", left)
	}
	if res := decodeResult(t, s.Must("update", "--json").Stdout); res.Status != "up-to-date" {
		t.Errorf("second update: %+v", res)
	}

	// A downgrade needs --allow-downgrade.
	ch.Publish(t, "v1.0.0", updatetest.Tarball(t, r.old), r.key.Priv)
	if r := s.Run(nil, "update", "--version", "v1.0.0"); r.Code == 0 || !strings.Contains(r.Stderr, "--allow-downgrade") {
		t.Fatalf("downgrade without the flag: exit %d, %s", r.Code, r.Stderr)
	}
	s.InstalledIs(r.new)
	s.Must("update", "--version", "v1.0.0", "--allow-downgrade")
	s.InstalledIs(r.old)
	if st := s.Status(); st.Version != "v1.0.0" {
		t.Errorf("daemon after downgrade runs %s", st.Version)
	}
}

func TestUpdateFromOfflineArtifact(t *testing.T) {
	r := builds(t)
	dir := t.TempDir()
	tarball := updatetest.Tarball(t, r.new)
	art := filepath.Join(dir, updatetest.ArtifactName("v1.1.0"))
	os.WriteFile(art, tarball, 0o644)
	os.WriteFile(filepath.Join(dir, "manifest.json"), updatetest.Sign(t, updatetest.ManifestFor("v1.1.0", filepath.Base(art), tarball), r.key.Priv), 0o644)
	s := updatetest.NewSandbox(t, r.old, "", "") // no channel at all
	if r := s.Run(nil, "update", "--check"); r.Code == 0 || !strings.Contains(r.Stderr, "--from") {
		t.Fatalf("check without a channel: exit %d %s", r.Code, r.Stderr)
	}
	res := decodeResult(t, s.Must("update", "--from", art, "--json").Stdout)
	if res.Status != "updated" {
		t.Fatalf("offline update: %+v", res)
	}
	s.InstalledIs(r.new)
	if !strings.Contains(strings.Join(res.Notes, "\n"), "no daemon was running") {
		t.Errorf("notes do not say no daemon was restarted: %v", res.Notes)
	}
}

// TestUpdateRefusesBadReleases: every bad release is refused before anything is installed,
// and the running daemon is left alone.
func TestUpdateRefusesBadReleases(t *testing.T) {
	r := builds(t)
	tarball := updatetest.Tarball(t, r.new)
	other := updatetest.NewKey(t)
	s := updatetest.NewSandbox(t, r.old, "", "")
	s.Must("daemon", "start")
	before := s.Status()
	for _, tc := range []struct {
		name, want string
		publish    func(ch *updatetest.Channel)
	}{
		{"unknown key", "not signed by any key this banger trusts", func(ch *updatetest.Channel) { ch.Publish(t, "v1.1.0", tarball, other.Priv) }},
		{"bad signature", "signature does not verify", func(ch *updatetest.Channel) {
			ch.Publish(t, "v1.1.0", tarball, r.key.Priv)
			// Re-sign with the untrusted key but claim the trusted key's id.
			m := updatetest.ManifestFor("v1.1.0", "v1.1.0/"+updatetest.ArtifactName("v1.1.0"), tarball)
			var env update.Signed
			json.Unmarshal(updatetest.Sign(t, m, other.Priv), &env)
			env.Signatures[0].KeyID = update.KeyID(r.key.Pub)
			data, _ := json.Marshal(env)
			ch.Put("latest.json", data)
		}},
		{"wrong hash", "SHA-256", func(ch *updatetest.Channel) {
			ch.Publish(t, "v1.1.0", tarball, r.key.Priv)
			bad := append([]byte{}, tarball...)
			bad[len(bad)/2] ^= 0xff
			ch.Put("v1.1.0/"+updatetest.ArtifactName("v1.1.0"), bad)
		}},
		{"truncated download", "v1.1.0", func(ch *updatetest.Channel) {
			ch.Publish(t, "v1.1.0", tarball, r.key.Priv)
			ch.Cut("v1.1.0/"+updatetest.ArtifactName("v1.1.0"), len(tarball)/3)
		}},
		{"binary reports another version", "reports version v1.0.0", func(ch *updatetest.Channel) {
			ch.Publish(t, "v1.1.0", updatetest.Tarball(t, r.old), r.key.Priv)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ch := updatetest.NewChannel(t)
			tc.publish(ch)
			os.WriteFile(filepath.Join(s.Dir, "cfg/banger/config.toml"), []byte("[network]\nhelper_socket = \""+filepath.Join(s.Dir, "no-helper.sock")+"\"\n[update]\nchannel_url = \""+ch.URL()+"\"\n"), 0o600)
			res := s.Run(nil, "update")
			if res.Code == 0 || !strings.Contains(res.Stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want a refusal mentioning %q", res.Code, res.Stderr, tc.want)
			}
			t.Logf("refused:\n%s", strings.TrimSpace(res.Stderr))
			s.InstalledIs(r.old)
			if left := s.Leftovers(); len(left) > 0 {
				t.Errorf("leftovers: %v", left)
			}
			if st := s.Status(); st.PID != before.PID || st.Version != "v1.0.0" {
				t.Errorf("daemon disturbed by a refused update: %+v", st)
			}
		})
	}
}

// TestUpdateDoctorFailRollsBack installs a v1.1.0 whose doctor FAILs: the update must put
// v1.0.0 back byte for byte, with a daemon running from it.
func TestUpdateDoctorFailRollsBack(t *testing.T) {
	r := builds(t)
	ch := updatetest.NewChannel(t)
	ch.Publish(t, "v1.1.0", updatetest.Tarball(t, r.broken), r.key.Priv)
	s := updatetest.NewSandbox(t, r.old, ch.URL(), "")
	s.Must("daemon", "start")

	out := s.Run(nil, "update", "--json")
	if out.Code != 1 {
		t.Fatalf("update of a failing release: exit %d\n%s\n%s", out.Code, out.Stdout, out.Stderr)
	}
	res := decodeResult(t, out.Stdout)
	if res.Status != "rolled-back" || len(res.FailedChecks) != 1 || res.FailedChecks[0].Name != "update-test-fail" {
		t.Fatalf("result: %+v", res)
	}
	if !strings.Contains(out.Stderr, "v1.0.0 is installed again") {
		t.Errorf("stderr does not say the old version is back: %s", out.Stderr)
	}
	t.Logf("rollback: total %.0f ms, rollback+restart of the old version %.0f ms: %+v", res.TotalMS, stageMS(res, "rollback", "restart-previous"), res.Stages)
	s.InstalledIs(r.old)
	st := s.Status()
	if st.Version != "v1.0.0" {
		t.Fatalf("daemon after rollback runs %s", st.Version)
	}
	exe, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(st.PID), "exe"))
	if err != nil || exe != s.Path("banger") {
		t.Errorf("daemon pid %d runs %q (%v), want %s", st.PID, exe, err, s.Path("banger"))
	}
	var doc struct {
		Checks []api.CheckResult `json:"checks"`
	}
	json.Unmarshal([]byte(s.Run(nil, "doctor", "--json").Stdout), &doc)
	for _, c := range doc.Checks {
		if c.Name == "update-test-fail" || (c.Name == "daemon" && c.Status != api.Pass) {
			t.Errorf("doctor after rollback: %+v", c)
		}
	}
	if left := s.Leftovers(); len(left) > 0 {
		t.Errorf("leftovers: %v", left)
	}
}

func TestUpdateRefusesConcurrentUpdate(t *testing.T) {
	r := builds(t)
	ch := updatetest.NewChannel(t)
	ch.Publish(t, "v1.1.0", updatetest.Tarball(t, r.new), r.key.Priv)
	s := updatetest.NewSandbox(t, r.old, ch.URL(), "")
	in := s.Install()
	os.MkdirAll(in.Staging, 0o700)
	l, err := in.TryLock()
	if err != nil {
		t.Fatal(err)
	}
	res := s.Run(nil, "update")
	l.Unlock()
	if res.Code == 0 || !strings.Contains(res.Stderr, "another banger update is running") {
		t.Fatalf("update while locked: exit %d %s", res.Code, res.Stderr)
	}
	s.InstalledIs(r.old)
}

// TestUpdateKilledMidway kills `banger update` (SIGKILL, from inside, at a named point) and
// checks that a whole banger is always installed and that doctor or the next update repairs
// the rest.
func TestUpdateKilledMidway(t *testing.T) {
	r := builds(t)
	ch := updatetest.NewChannel(t)
	ch.Publish(t, "v1.1.0", updatetest.Tarball(t, r.new), r.key.Priv)

	t.Run("between the two renames of banger, repaired by doctor", func(t *testing.T) {
		s := updatetest.NewSandbox(t, r.old, ch.URL(), "")
		s.Must("daemon", "start")
		res := s.Run([]string{"BANGER_UPDATE_CRASH_AT=before-final-rename:banger"}, "update")
		if res.Code != -1 {
			t.Fatalf("update was not killed: exit %d %s", res.Code, res.Stderr)
		}
		// banger itself is the old one, whole, and runs; its backup link exists; the guest
		// binaries are already the new ones.
		if !updatetest.SameFile(t, s.Path("banger"), r.old.Path("banger")) {
			t.Fatal("banger is not v1.0.0 after a kill before its final rename")
		}
		if !updatetest.SameFile(t, s.Path("banger-init"), r.new.Path("banger-init")) {
			t.Fatal("the kill point is not between the swaps: banger-init is not yet v1.1.0")
		}
		if v := s.Must("version").Stdout; !strings.Contains(v, "v1.0.0") {
			t.Fatalf("installed banger: %q", v)
		}
		var doc struct {
			Checks []api.CheckResult `json:"checks"`
		}
		json.Unmarshal([]byte(s.Run(nil, "doctor", "--json").Stdout), &doc)
		var upd api.CheckResult
		for _, c := range doc.Checks {
			if c.Name == "update" {
				upd = c
			}
		}
		if upd.Status != api.Warn || !strings.Contains(upd.Detail, "repaired an interrupted update v1.0.0 -> v1.1.0") {
			t.Fatalf("doctor's update check: %+v", upd)
		}
		t.Logf("doctor: %s", upd.Detail)
		s.InstalledIs(r.old)
		if left := s.Leftovers(); len(left) > 0 {
			t.Errorf("leftovers after doctor's repair: %v", left)
		}
		// And the update then goes through.
		s.Must("update")
		s.InstalledIs(r.new)
	})

	t.Run("after the swap, repaired by the next update", func(t *testing.T) {
		s := updatetest.NewSandbox(t, r.old, ch.URL(), "")
		s.Must("daemon", "start")
		res := s.Run([]string{"BANGER_UPDATE_CRASH_AT=swapped"}, "update")
		if res.Code != -1 {
			t.Fatalf("update was not killed: exit %d %s", res.Code, res.Stderr)
		}
		s.InstalledIs(r.new) // fully in place, never verified
		// The next update (run by the new, unverified binary) first restores v1.0.0, then
		// installs v1.1.0 properly: restart and doctor.
		out := s.Run(nil, "update", "--json")
		if out.Code != 0 {
			t.Fatalf("next update: exit %d\n%s\n%s", out.Code, out.Stdout, out.Stderr)
		}
		res2 := decodeResult(t, out.Stdout)
		if res2.Status != "updated" || !strings.Contains(strings.Join(res2.Repaired, "\n"), "interrupted update v1.0.0 -> v1.1.0") {
			t.Fatalf("next update: %+v", res2)
		}
		s.InstalledIs(r.new)
		if st := s.Status(); st.Version != "v1.1.0" {
			t.Errorf("daemon runs %s", st.Version)
		}
		if left := s.Leftovers(); len(left) > 0 {
			t.Errorf("leftovers: %v", left)
		}
	})
}
