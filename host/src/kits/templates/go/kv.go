
// KvError is a failed key-value operation.
type KvError struct {
	Kind    uint8 // 0 too large, 1 quota exceeded, 2 the store failed
	Message string
}

func (e *KvError) Error() string { return e.Message }

func kvResult(ret unsafe.Pointer) *KvError {
	if get8(ret, 0) == 0 {
		return nil
	}
	return &KvError{Kind: get8(ret, 4), Message: getString(ret, 8)}
}

//go:wasmimport hearth:plugin/kv@0.1.0 get
func hearthKvGet(p unsafe.Pointer, n uint32, ret unsafe.Pointer)

// KvGet reads a key of the plugin's store: its value and whether it exists.
func KvGet(key string) ([]byte, bool, error) {
	p, n := lowerString(key)
	ret := hearthAlloc(16, 4)
	hearthKvGet(p, n, ret)
	if err := kvResult(ret); err != nil {
		return nil, false, err
	}
	if get8(ret, 4) == 0 {
		return nil, false, nil
	}
	return liftBytes(getPtr(ret, 8), get32(ret, 12)), true, nil
}

//go:wasmimport hearth:plugin/kv@0.1.0 set
func hearthKvSet(kp unsafe.Pointer, kn uint32, vp unsafe.Pointer, vn uint32, ret unsafe.Pointer)

// KvSet writes a key; the call's writes are committed when it returns.
func KvSet(key string, value []byte) error {
	kp, kn := lowerString(key)
	vp, vn := lowerString(string(value))
	ret := hearthAlloc(16, 4)
	hearthKvSet(kp, kn, vp, vn, ret)
	if err := kvResult(ret); err != nil {
		return err
	}
	return nil
}

//go:wasmimport hearth:plugin/kv@0.1.0 delete
func hearthKvDelete(p unsafe.Pointer, n uint32, ret unsafe.Pointer)

// KvDelete deletes a key; it says whether the key existed.
func KvDelete(key string) (bool, error) {
	p, n := lowerString(key)
	ret := hearthAlloc(16, 4)
	hearthKvDelete(p, n, ret)
	if err := kvResult(ret); err != nil {
		return false, err
	}
	return get8(ret, 4) != 0, nil
}

//go:wasmimport hearth:plugin/kv@0.1.0 list-keys
func hearthKvListKeys(p unsafe.Pointer, n uint32, ret unsafe.Pointer)

// KvListKeys lists the keys that start with prefix, in order.
func KvListKeys(prefix string) ([]string, error) {
	p, n := lowerString(prefix)
	ret := hearthAlloc(16, 4)
	hearthKvListKeys(p, n, ret)
	if err := kvResult(ret); err != nil {
		return nil, err
	}
	list, count := getPtr(ret, 4), get32(ret, 8)
	keys := make([]string, count)
	for i := range keys {
		keys[i] = getString(list, uintptr(8*i))
	}
	return keys, nil
}
