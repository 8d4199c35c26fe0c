package drivers

import (
	"strings"
	"testing"
)

func TestFactoryKnowsBothDrivers(t *testing.T) {
	f := Factory(Config{KernelCacheDir: t.TempDir()})
	for _, name := range []string{"qemu", "firecracker"} {
		drv, err := f(name, "tcg")
		if err != nil || drv == nil || drv.Name() != name {
			t.Errorf("%s: driver %v, err %v", name, drv, err)
		}
	}
	if _, err := f("bhyve", "kvm"); err == nil || !strings.Contains(err.Error(), `unknown VMM driver "bhyve"`) {
		t.Errorf("unknown driver: err %v", err)
	}
}
