package translate

import (
	"errors"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

type metav1Condition = metav1.Condition

// condition builds a condition; ok is its status. LastTransitionTime stays
// zero: the status writer stamps it.
func condition(typ string, ok bool, reason, msg string, generation int64) metav1.Condition {
	s := metav1.ConditionFalse
	if ok {
		s = metav1.ConditionTrue
	}
	return metav1.Condition{Type: typ, Status: s, Reason: reason, Message: msg, ObservedGeneration: generation}
}

// accepted is a policy's Accepted condition: True with reason Accepted when
// err is nil, else False with err's reason.
func accepted(err error, okMsg string, generation int64) []metav1.Condition {
	if err == nil {
		if okMsg == "" {
			okMsg = "Accepted"
		}
		return []metav1.Condition{condition("Accepted", true, "Accepted", okMsg, generation)}
	}
	reason := ReasonInvalid
	if errors.Is(err, ErrConflicted) {
		reason = ReasonConflicted
	}
	return []metav1.Condition{condition("Accepted", false, reason, err.Error(), generation)}
}
