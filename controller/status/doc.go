// Package status merges the status translation computed (translate.Status)
// into the status an object already carries. The functions are pure: they
// return the merged status, and the caller writes it only when it differs
// from what the object has (equality.Semantic.DeepEqual), so an unchanged
// world causes no writes.
//
// Merging follows meta.SetStatusCondition: a condition's lastTransitionTime
// moves only when its status changes; reason, message and observedGeneration
// are always refreshed. Conditions translation no longer reports are removed
// from objects Ambit owns. On routes, only parent entries whose
// controllerName is Ambit's are replaced; other controllers' entries are kept
// as they are. Values the Gateway API CRDs default on the server (parentRef
// group and kind, address type, supported-kind group) are defaulted here too,
// so that a written status compares equal when read back.
package status
