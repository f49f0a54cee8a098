package cniinstall

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
)

// PluginType is the "type" of Ambit's entry in a conflist, which is also the
// name of the plugin binary in the CNI bin folder.
const PluginType = "ambit-cni"

// convertedKey is the top-level field of a conflist that ztunnel made from a
// single-plugin file; it records that file's name and content, so that
// unchaining restores it exactly. The runtime ignores unknown top-level
// fields.
const convertedKey = "ambitConvertedFrom"

// converted is the value of convertedKey.
type converted struct {
	File    string `json:"file"`
	Content string `json:"content"` // base64 of the original bytes
}

// member is one field of a JSON object, kept in the file's order.
type member struct {
	key string
	val json.RawMessage
}

// object is a JSON object whose field order and values are kept as read.
type object []member

// parseObject reads one JSON object; duplicate keys and trailing data are
// errors.
func parseObject(data []byte) (object, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("not valid JSON: %w", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errors.New("not a JSON object")
	}
	var o object
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("not valid JSON: %w", err)
		}
		key, ok := tok.(string)
		if !ok {
			return nil, errors.New("not valid JSON: object key is not a string")
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, fmt.Errorf("not valid JSON: field %q: %w", key, err)
		}
		if seen[key] {
			return nil, fmt.Errorf("field %q appears twice", key)
		}
		seen[key] = true
		o = append(o, member{key, raw})
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("not valid JSON: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("not valid JSON: data after the object")
	}
	return o, nil
}

func (o object) get(key string) (json.RawMessage, bool) {
	for _, m := range o {
		if m.key == key {
			return m.val, true
		}
	}
	return nil, false
}

func (o *object) set(key string, val json.RawMessage) {
	for i := range *o {
		if (*o)[i].key == key {
			(*o)[i].val = val
			return
		}
	}
	*o = append(*o, member{key, val})
}

func (o *object) del(key string) {
	for i := range *o {
		if (*o)[i].key == key {
			*o = append((*o)[:i], (*o)[i+1:]...)
			return
		}
	}
}

// marshal writes the object indented by two spaces, with a final newline.
func (o object) marshal() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, m := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, err := json.Marshal(m.key)
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(m.val)
	}
	b.WriteByte('}')
	var out bytes.Buffer
	if err := json.Indent(&out, b.Bytes(), "", "  "); err != nil {
		return nil, err
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

// stringField returns a string field; absent is "", another type an error.
func (o object) stringField(key string) (string, bool, error) {
	raw, ok := o.get(key)
	if !ok {
		return "", false, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", true, fmt.Errorf("field %q is not a string", key)
	}
	return s, true, nil
}

// pluginType returns the "type" of one plugin entry.
func pluginType(entry json.RawMessage) (string, error) {
	o, err := parseObject(entry)
	if err != nil {
		return "", err
	}
	t, ok, err := o.stringField("type")
	if err != nil {
		return "", err
	}
	if !ok || t == "" {
		return "", errors.New(`has no "type"`)
	}
	return t, nil
}

// isList reports whether a parsed config file is a conflist (it has
// "plugins"), as opposed to a single-plugin config.
func isList(o object) bool {
	_, ok := o.get("plugins")
	return ok
}

// parseList parses a conflist and checks what the runtime needs: "plugins"
// is an array of objects that each have a "type"; "name" and "cniVersion"
// are strings when present.
func parseList(data []byte) (object, []json.RawMessage, error) {
	o, err := parseObject(data)
	if err != nil {
		return nil, nil, err
	}
	for _, k := range []string{"name", "cniVersion"} {
		if _, _, err := o.stringField(k); err != nil {
			return nil, nil, err
		}
	}
	raw, ok := o.get("plugins")
	if !ok {
		return nil, nil, errors.New(`no "plugins" array`)
	}
	var plugins []json.RawMessage
	if err := json.Unmarshal(raw, &plugins); err != nil {
		return nil, nil, errors.New(`"plugins" is not an array`)
	}
	for i, p := range plugins {
		if _, err := pluginType(p); err != nil {
			return nil, nil, fmt.Errorf("plugin %d: %w", i, err)
		}
	}
	return o, plugins, nil
}

// isOurs reports whether a (validated) plugin entry is Ambit's.
func isOurs(entry json.RawMessage) bool {
	t, err := pluginType(entry)
	return err == nil && t == PluginType
}

// sameJSON reports whether two JSON values are equal as values.
func sameJSON(a, b []byte) bool {
	x, errA := decodeValue(a)
	y, errB := decodeValue(b)
	return errA == nil && errB == nil && reflect.DeepEqual(x, y)
}

// decodeValue decodes one JSON value, numbers as their text (so that a
// number beyond float64 still compares).
func decodeValue(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("data after the value")
	}
	return v, nil
}

// chainList returns a conflist with entry as its last plugin. A list that
// already holds exactly one entry of Ambit's equal to entry is returned
// unchanged (changed false); otherwise every entry of Ambit's is replaced
// by entry, appended after the other plugins, which are kept as they are.
func chainList(data []byte, entry json.RawMessage) (out []byte, changed bool, err error) {
	o, plugins, err := parseList(data)
	if err != nil {
		return nil, false, err
	}
	var others []json.RawMessage
	ours, same := 0, false
	for _, p := range plugins {
		if isOurs(p) {
			ours++
			same = sameJSON(p, entry)
			continue
		}
		others = append(others, p)
	}
	if len(others) == 0 {
		return nil, false, errors.New("no plugin to chain after: ambit-cni must follow the plugin that sets up the pod's interface")
	}
	if ours == 1 && same {
		return data, false, nil
	}
	if err := setPlugins(&o, append(others, entry)); err != nil {
		return nil, false, err
	}
	out, err = o.marshal()
	return out, err == nil, err
}

func setPlugins(o *object, plugins []json.RawMessage) error {
	if plugins == nil {
		plugins = []json.RawMessage{}
	}
	raw, err := json.Marshal(plugins)
	if err != nil {
		return err
	}
	o.set("plugins", raw)
	return nil
}

// convertConf turns a single-plugin config (the content of file) into a
// conflist holding it and entry, remembering the original for unchainList.
func convertConf(data []byte, file string, entry json.RawMessage) ([]byte, error) {
	o, err := parseObject(data)
	if err != nil {
		return nil, err
	}
	t, err := pluginType(data)
	if err != nil {
		return nil, err
	}
	if t == PluginType {
		return nil, errors.New("the network's only plugin is ambit-cni, which must be chained after another")
	}
	var list object
	for _, k := range []string{"cniVersion", "name"} {
		v, ok, err := o.stringField(k)
		if err != nil {
			return nil, err
		}
		if ok {
			raw, _ := json.Marshal(v)
			list = append(list, member{k, raw})
		}
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, data); err != nil {
		return nil, err
	}
	if err := setPlugins(&list, []json.RawMessage{compact.Bytes(), entry}); err != nil {
		return nil, err
	}
	conv, err := json.Marshal(converted{File: file, Content: base64.StdEncoding.EncodeToString(data)})
	if err != nil {
		return nil, err
	}
	list.set(convertedKey, conv)
	return list.marshal()
}

// restore is a file that unchaining gives back: the single-plugin config a
// conflist was converted from.
type restore struct {
	File    string
	Content []byte
}

// unchainList removes every entry of Ambit's from a conflist. When the list
// was converted from a single-plugin file and still holds just that plugin,
// it returns that file to restore instead (out nil). removed is false when
// the list held no entry of Ambit's (out is then data).
func unchainList(data []byte) (out []byte, rest *restore, removed bool, err error) {
	o, plugins, err := parseList(data)
	if err != nil {
		return nil, nil, false, err
	}
	var others []json.RawMessage
	for _, p := range plugins {
		if !isOurs(p) {
			others = append(others, p)
		}
	}
	if len(others) == len(plugins) {
		return data, nil, false, nil
	}
	if raw, ok := o.get(convertedKey); ok {
		var c converted
		if json.Unmarshal(raw, &c) == nil {
			if content, err := base64.StdEncoding.DecodeString(c.Content); err == nil && c.File != "" &&
				len(others) == 1 && sameJSON(others[0], content) {
				return nil, &restore{File: c.File, Content: content}, true, nil
			}
		}
		// Changed since the conversion: keep it as a conflist.
		o.del(convertedKey)
	}
	if err := setPlugins(&o, others); err != nil {
		return nil, nil, false, err
	}
	out, err = o.marshal()
	return out, nil, err == nil, err
}
